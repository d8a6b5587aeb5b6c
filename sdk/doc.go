// Package sdk is the Go client of Metaparticle Sync: distributed locks and leader election for a
// program running in a Kubernetes Pod annotated metaparticle.io/sync: "true", whose side-car does
// the work on coordination.k8s.io/v1 Leases. The SDK speaks the side-car's HTTP API (package
// [github.com/metaparticle-io/sync/wire]) and imports nothing but the standard library and that
// package, so depending on it pulls in no Kubernetes code.
//
// The package is named sdk, after its directory, so that it imports without an alias; it is not
// named sync, which would shadow the standard library's. Programs that prefer a longer name can
// import it as mpsync "github.com/metaparticle-io/sync/sdk".
//
// # Locks
//
// The original Python SDK's story, l = Lock('test'); l.acquire(); ...; l.release(), reads:
//
//	l := sdk.NewLock("test")
//	if err := l.Acquire(ctx); err != nil {
//		return err
//	}
//	fmt.Println("I have the lock! token", l.Token())
//	select {
//	case <-time.After(30 * time.Second): // the work
//	case <-l.Lost(): // the side-car could not keep the lock: stop at once
//	}
//	return l.Release(ctx)
//
// [Lock.Acquire] blocks until the lock is held or ctx ends; [Lock.TryAcquire] makes one attempt.
// Each hold carries a fencing token ([Lock.Token]), strictly greater than the token of every earlier
// hold of the same name; pass it to the resource the lock protects so that it can refuse a writer
// whose hold has ended. [Lock.Lost] returns a channel that is closed when the hold ends.
//
// # Elections
//
// The seed's Election('test', master_fn, lost_master_fn).run() reads:
//
//	e := sdk.NewElection("test",
//		func(ctx context.Context) { fmt.Println("I am the master") },
//		func() { fmt.Println("I lost the master") })
//	err := e.Run(ctx)
//
// [Election.Run] stands as a candidate until ctx ends. When this process is elected it calls the
// elected function with a context that is cancelled the moment leadership is lost; once that
// function has returned it calls the lost function, and it keeps standing, so a replica that lost
// leadership can lead again. [Election.Leader] reads the current leader and [Election.Watch]
// follows changes; neither needs to stand.
//
// # Clients and sessions
//
// A [Client] owns a session with the side-car: it opens it when a lock or election first needs
// it, keeps it alive, and holds its event stream open, on which the side-car reports lost locks
// and changes of leadership. One session is one holder: every lock and election of a Client is
// held by the same identity, "<pod>/<session>", and a lock held through one Client excludes every
// other Client, in this process or another. [Client.Close] ends the session and so releases
// everything it holds; when the process dies, its connections close and the side-car releases
// its holds at once.
//
// [NewLock] and [NewElection] use [DefaultClient], created on first use from the environment: the
// address in $METAPARTICLE_SYNC_ADDR ([wire.EnvAddress]), which the injector sets, or else
// [wire.DefaultAddress]. Use [NewClient] and its options for anything else.
//
// # Failures
//
// The SDK never reports a hold it does not have. A lock the side-car reports lost is reported
// lost at once (its Lost channel closed), and so is a leadership (the elected context cancelled).
// If the event stream breaks, if a keep-alive is not acknowledged or the stream stays silent for
// three quarters of the session's TTL, or if the side-car no longer knows the session, every hold
// of the session is reported lost at once (Lost channels closed, elected contexts cancelled) and
// the next call opens a new session. So is every hold when one hold's validity runs out: the
// side-car says, with each grant and each keep-alive, how long each hold is guaranteed, and the
// SDK counts that from when it sent the request, so that a paused side-car cannot let another Pod
// hold a lock before this process is told. On doubt, a hold is lost.
//
// Transient errors (connection refused while the side-car starts, HTTP 5xx, 503 while the
// side-car waits for the API server) are retried with exponential back-off and jitter for up to
// the retry timeout ([WithRetryTimeout], 30 s by default) or until ctx ends. A side-car that
// cannot be reached yields an error matching [ErrUnreachable] that names the address tried and
// asks whether the Pod carries the injector's annotation. Other errors of the side-car wrap a
// [*wire.Error]: use errors.As to read its code.
//
// What is guaranteed, and what is not, is set out in the package's README.md: in short, a lock
// with expiry excludes other holders only as far as the resource it protects checks fencing
// tokens, and a program must stop its work when told that its hold is lost.
//
// # Concurrency
//
// Client, Lock and Election values are safe for concurrent use by multiple goroutines. A Lock is
// a handle on one name: while it holds (or is acquiring, or releasing) the lock, a second Acquire
// through it, or through another Lock of the same name on the same Client, fails with [ErrHeld].
// To make goroutines of one process contend, give each its own Client, or guard the Lock with a
// sync.Mutex.
package sdk
