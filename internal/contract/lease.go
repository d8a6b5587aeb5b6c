package contract

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/metaparticle-io/sync/wire"
)

// Labels and annotations on the Leases the side-car manages. `kubectl get leases -l
// app.kubernetes.io/managed-by=metaparticle-sync` lists them; add `-l metaparticle.io/kind=lock`
// (or election) to narrow it down.
const (
	// LabelManagedBy marks every Lease the side-car creates; its watches see only those.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedByValue is the value of LabelManagedBy.
	ManagedByValue = "metaparticle-sync"
	// ManagedBySelector is the label selector of the Leases the side-car manages.
	ManagedBySelector = LabelManagedBy + "=" + ManagedByValue
	// LabelKind is "lock" or "election" (wire.KindLock, wire.KindElection).
	LabelKind = "metaparticle.io/kind"
	// AnnotationName holds the lock or election name exactly as the application gave it. The
	// side-car checks it on every read and refuses a Lease whose annotation names something else
	// (a hash collision or a foreign object).
	AnnotationName = "metaparticle.io/name"
	// AnnotationToken holds the fencing token of the current (or last) grant, as a decimal uint64.
	AnnotationToken = "metaparticle.io/fencing-token"
	// AnnotationPodUID holds "<pod UID>/<session>" of the grant of the current hold, when that
	// hold may be released by the same Pod's next side-car once the dead one's promises have
	// run out (see elector's restart.go). It is absent for other holds and once the Lease is
	// released; a change of holder by any writer leaves it naming another session, which
	// invalidates it.
	AnnotationPodUID = "metaparticle.io/pod-uid"
	// LabelPodUID holds the Pod UID of AnnotationPodUID, so that a restarted side-car lists only
	// the Leases its Pod held (with the label selector LabelPodUID=<uid>). It comes and goes
	// with the annotation.
	LabelPodUID = "metaparticle.io/pod-uid"
)

// maxReadable is the longest readable part of a Lease name.
const maxReadable = 40

// LeaseName returns the name of the Lease that backs the lock or election called name:
//
//	<kind>-<readable>-<hash>
//
// where kind is "lock" or "election", readable is name lowercased with every run of characters
// other than [a-z0-9] replaced by one "-", trimmed of dashes and cut to 40 characters (omitted,
// with its dash, when nothing readable is left), and hash is the first 16 hexadecimal digits of
// the SHA-256 of name. The hash is always there, so names that read alike ("Foo", "foo", "foo!",
// "foo-<hash>") never share a Lease. The result is at most 66 characters of lowercase letters,
// digits and dashes: a valid DNS-1123 label and thus a valid Lease name. A lock and an election
// with the same name use different Leases.
func LeaseName(kind wire.Kind, name string) string {
	sum := sha256.Sum256([]byte(name))
	hash := hex.EncodeToString(sum[:8])
	readable := readablePart(name)
	if readable == "" {
		return string(kind) + "-" + hash
	}
	return string(kind) + "-" + readable + "-" + hash
}

func readablePart(name string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(name) {
		if !(r >= 'a' && r <= 'z') && !(r >= '0' && r <= '9') {
			dash = true
			continue
		}
		sep := dash && b.Len() > 0
		if n := b.Len() + 1; n > maxReadable || (sep && n+1 > maxReadable) {
			break
		}
		if sep {
			b.WriteByte('-')
		}
		b.WriteRune(r)
		dash = false
	}
	return b.String()
}
