// Package elector is the lock engine of the Metaparticle Sync side-car: named locks and leader
// elections for the containers of one Pod, backed by coordination.k8s.io/v1 Lease objects in
// the Pod's namespace.
//
// Engine holds all the logic and knows nothing of HTTP; package elector/server puts it on the
// wire (the lock API of docs/api.md, the original elector's protocol, health and metrics) and
// runs it as the side-car command, through the Engine's exported methods only. Package wire is
// the contract with the applications' clients; package internal/contract is what the side-car
// shares with the injector and syncctl (timing rules, environment, Lease names and labels).
//
// The package is arranged by feature, one file each: engine.go (lifecycle), leasewatch.go (the
// Lease informers: which Leases are watched, and for how long), session.go (sessions and their
// event streams), lock.go, election.go, watch.go (what is observed: state, watches, expiry),
// namestate.go (what the Engine keeps per name), worker.go (the one goroutine per name that
// writes its Lease: plan, do, apply), lease.go (the Lease objects written), restart.go, idle.go,
// health.go, leaseclient.go, metrics.go and config.go.
//
// # Sessions
//
// A client (one SDK instance in one process) opens a session, and every hold belongs to a
// session: a Lease's holder identity is "<pod>/<session ID>", so two processes in one Pod, or two
// sessions in one process, exclude each other. The session ID is public; every call on a session
// carries the session's secret (wire.SessionKey), which only the client that opened it knows, so
// no other process can release a hold or end a session that is not its own. A session lives
// while keep-alives arrive within its TTL. Its event stream, if open, is also a liveness
// signal: when the stream's connection closes, the session ends at once, which is how the
// death of the client's process is noticed within milliseconds. Ending a session, for any reason, fails its waits, withdraws its
// candidacies and releases its holds (the holder is cleared, so nobody waits for expiry).
//
// # Waiting without polling
//
// Informers of the Leases labelled app.kubernetes.io/managed-by=metaparticle-sync feed a state
// per name: by default one per name in use here, over that name's Lease alone, so that a
// side-car hears only of the names its Pod uses (Config.WatchScope; see leasewatch.go). A name
// with local holds, waiters, candidates or watchers has one worker goroutine, the only writer of
// its Lease (see worker.go). A waiter is woken by the watch (the Lease was released, or changed
// hands; a mere renewal by another holder only postpones the expiry its timer waits for, so it
// wakes nobody) or by a timer set to the instant the current holder's Lease expires: a
// deadline, not a poll. Local waiters of one lock are served first come, first served; between
// side-cars, whoever writes first wins. Every write is a Create or a conditional Update on the
// resourceVersion the decision was based on; the loser of a race waits for the informer to
// deliver the winner's version.
//
// # Expiry by observation
//
// Another holder's Lease is expired when this side-car has not seen it change (any new
// resourceVersion) for spec.leaseDurationSeconds, measured on this side-car's monotonic clock
// from the moment it first saw the current version. Times written in the Lease by other
// machines are never compared with this machine's clock, so clock offsets do not matter; clock
// rates must agree to within the margin between RenewDeadline and LeaseDuration.
//
// # Lost before stolen
//
// The holder renews every RenewPeriod, retries failures every RetryPeriod, and declares the
// hold lost (wire.EventLost for a lock, wire.EventDeposed for an election, a log line and
// metaparticle_sync_losses_total) when RenewDeadline has passed since the start of its last
// successful write; the pending write is abandoned at that instant. Any other side-car first saw
// that write after it started, and waits LeaseDuration > RenewDeadline from then, so the holder
// is told before anyone else can take the Lease, by LeaseDuration - RenewDeadline (5 s by
// default) less whatever its clock runs slow. A conflict on renewal (someone else changed the
// Lease), a deletion of the Lease, an observed change of its holder, or any observed version of
// it that this side-car did not write (a hand edit of its lease duration, say) ends the hold at
// once, with a lost (or deposed) event: every end of a hold that its session did not ask for is
// reported.
//
// # Fencing tokens
//
// Every grant (lock acquired, election won) carries a token, the decimal form of a uint64,
// strictly greater than every earlier grant's token for the same name and kind, across side-car
// restarts and across deletion and re-creation of the Lease. It is written in the
// metaparticle.io/fencing-token annotation by the write that grants, and derived from etcd
// revisions, which the API server exposes as resourceVersions:
//
//   - Taking over an existing Lease (Update path): token = resourceVersion of the version the
//     conditional Update replaces, plus one. The Update commits at a revision greater than that
//     resourceVersion, so token <= its own commit revision.
//   - Creating the Lease (Create path): the Create names the holder but has no token; an
//     immediate conditional Update on the creation's resourceVersion c stamps token = c. The
//     grant is reported only after both succeeded; if the stamp fails, the next attempt takes
//     the Lease over by the Update path.
//
// Proof of monotonicity: every token is at most the revision of the write that granted it, and
// any later grant is computed from a version read after that write (the conditional Update
// guarantees it is based on the latest version), so its resourceVersion r is at least that
// revision and its token r+1 is greater; a created Lease's revision is greater than the
// revision of the deletion that preceded it, and so greater than every token granted before.
//
// This relies on resourceVersions being etcd revisions: decimal integers that increase with
// every write in the cluster. The side-car refuses to grant (wire.CodeInternal) if a
// resourceVersion is not a decimal integer. Tokens can go backwards only if etcd itself does,
// for example when a cluster is restored from a backup taken before the last grant.
//
// # What is not guaranteed
//
//   - Mutual exclusion in time. A process that is paused (garbage collection, SIGSTOP, a
//     frozen node) cannot act on "lost" and may keep working after another holder was
//     granted. Protected resources must check fencing tokens (docs/api.md explains how).
//   - Fairness between side-cars. Local waiters are FIFO; across Pods the fastest writer wins.
//   - Holds across side-car restarts. A restart ends all sessions; after SIGTERM their holds are
//     released; after a crash the next side-car of the same Pod (same Config.PodUID) releases
//     them once their last validity has run out (restart.go), and otherwise they expire after
//     LeaseDuration.
//   - Safety against people. Editing or deleting a held Lease by hand breaks exclusion for that
//     name (the holder is told lost as soon as it sees the change; tokens keep increasing).
//   - Every intermediate state for watchers. A watch of an election reports the changes this
//     side-car observed; while its watch of the API server is interrupted, changes may be
//     coalesced.
//   - A first use as fast as the next. With Config.WatchScope WatchNames, a name this side-car
//     does not watch yet is listed before its first grant or read (one round trip to the API
//     server), and another Pod's hold of it counts as renewed at that moment: the first use of a
//     name held elsewhere by a dead holder waits a whole lease duration from then.
//   - Exactly one Lease per name for ever. A Lease idle for Config.DeleteIdleAfter is deleted
//     (idle.go) and created again at the name's next use; tokens keep growing across that.
package elector
