package chaos

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/metaparticle-io/sync/wire"
)

// ForeignRelease is what a foreign release saw ([AttemptForeignRelease]): the fault
// [FaultForeignRelease], run by `chaos -foreign-release` in an application container of a
// contender Pod, as a process other than the application. The command prints it as one JSON
// line.
type ForeignRelease struct {
	Pod  string `json:"pod"`  // the Pod it ran in
	Lock string `json:"lock"` // the lock's name
	// Holder and Token are the lock's holder identity ("<pod>/<session>") and fencing token as
	// the side-car showed them (GET wire.LockPath); Holder is empty when nobody held it.
	Holder string `json:"holder,omitempty"`
	Token  uint64 `json:"token,omitempty"`
	// Start is just before the GET, At just before the first DELETE (zero when none was sent),
	// End when the last request was answered.
	Start time.Time `json:"start"`
	At    time.Time `json:"at,omitzero"`
	End   time.Time `json:"end"`
	// Attempts are the DELETEs sent: none when the holder was not a session of this Pod (its
	// side-car knows only its own sessions), else one without a secret, then one with a wrong
	// secret.
	Attempts []ReleaseAttempt `json:"attempts,omitempty"`
}

// A ReleaseAttempt is one DELETE wire.SessionLockPath of a foreign release.
type ReleaseAttempt struct {
	// Authorization is "none" or "wrong secret".
	Authorization string `json:"authorization"`
	Status        int    `json:"status"`
	// Code is the error code of the answer's body (wire.Error), if it had one.
	Code string `json:"code,omitempty"`
}

// Session returns the session part of the holder identity.
func (f ForeignRelease) Session() string { _, s, _ := strings.Cut(f.Holder, "/"); return s }

// HolderPod returns the Pod part of the holder identity.
func (f ForeignRelease) HolderPod() string { p, _, _ := strings.Cut(f.Holder, "/"); return p }

// Refused reports whether every DELETE was sent and answered 401 unauthorized.
func (f ForeignRelease) Refused() bool {
	if len(f.Attempts) != 2 {
		return false
	}
	for _, a := range f.Attempts {
		if a.Status != http.StatusUnauthorized || a.Code != string(wire.CodeUnauthorized) {
			return false
		}
	}
	return true
}

// Fault returns the fault's record for the history.
func (f ForeignRelease) Fault(desc string) Fault {
	fl := Fault{Kind: FaultForeignRelease, Pod: f.Pod, Start: f.Start.UTC(), End: f.End.UTC(), Desc: desc, Session: f.Session(), Token: f.Token}
	if len(f.Attempts) > 0 {
		fl.StatusNoSecret = f.Attempts[0].Status
	}
	if len(f.Attempts) > 1 {
		fl.StatusWrongSecret = f.Attempts[1].Status
	}
	return fl
}

// AttemptForeignRelease is a misbehaving process in Pod pod: it reads who holds lock from the
// side-car at base ("http://127.0.0.1:13131") and, when the holder is a session of this Pod,
// asks to release the lock for that session, first without a secret, then with a wrong one.
// An error means the side-car could not be asked or answered the GET with something else than
// a lock's state; the DELETEs' answers, whatever they are, are in the result.
func AttemptForeignRelease(ctx context.Context, hc *http.Client, base, pod, lock string) (ForeignRelease, error) {
	f := ForeignRelease{Pod: pod, Lock: lock, Start: time.Now()}
	body, status, err := call(ctx, hc, http.MethodGet, base+wire.LockPath(lock), "")
	if err != nil {
		return f, err
	}
	if status != http.StatusOK {
		return f, fmt.Errorf("GET %s: got status %d (%s); want 200", wire.LockPath(lock), status, body)
	}
	var st wire.LockState
	if err := json.Unmarshal(body, &st); err != nil {
		return f, fmt.Errorf("GET %s: %w", wire.LockPath(lock), err)
	}
	f.End = time.Now()
	if !st.Held {
		return f, nil
	}
	f.Holder = st.Holder
	f.Token, _ = strconv.ParseUint(st.Token, 10, 64)
	if f.HolderPod() != pod || f.Session() == "" {
		return f, nil
	}
	wrong := make([]byte, 32)
	_, _ = rand.Read(wrong)
	f.At = time.Now()
	for _, a := range []struct{ what, header string }{{"none", ""}, {"wrong secret", "Bearer " + hex.EncodeToString(wrong)}} {
		body, status, err := call(ctx, hc, http.MethodDelete, base+wire.SessionLockPath(f.Session(), lock), a.header)
		if err != nil {
			return f, err
		}
		var we wire.Error
		_ = json.Unmarshal(body, &we)
		f.Attempts = append(f.Attempts, ReleaseAttempt{Authorization: a.what, Status: status, Code: string(we.Code)})
	}
	f.End = time.Now()
	return f, nil
}

func call(ctx context.Context, hc *http.Client, method, url, authorization string) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return nil, 0, err
	}
	if authorization != "" {
		req.Header.Set(wire.HeaderAuthorization, authorization)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return b, resp.StatusCode, err
}
