// Package syncctl is the command line of Metaparticle Sync (cmd/syncctl, also installed as the
// kubectl plugin kubectl-sync): it shows, from the Leases that the side-cars write, who holds
// each lock and leads each election, since when, with which fencing token, and when the hold
// expires.
//
//	syncctl locks [-n NS | -A] [-w] [-o json|yaml|wide]
//	syncctl elections [-n NS | -A] [-w] [-o json|yaml|wide]   (alias: leaders)
//	syncctl describe NAME [--kind lock|election] [-o json|yaml]
//	syncctl sidecars [-n NS | -A] [-o json|yaml]
//	syncctl check [-n NS | -A] [--service-account SA]... [-o json|yaml]
//	syncctl version [--client] [-o json|yaml]
//
// It writes nothing. locks, elections and describe need get, list and watch on leases (and get
// on pods for describe); sidecars lists pods and reads pods/proxy; check (check.go) also reads
// the webhook configuration, the injector's Service, Deployment and serving Secret, and sends a
// server-side dry-run Pod create and SubjectAccessReviews, neither of which is ever stored. The
// kubeconfig, context and namespace are chosen as kubectl chooses them (client-go's clientcmd,
// with kubectl's flags).
// Leases are selected by the side-car's labels (contract.LabelManagedBy, contract.LabelKind) and
// named by its annotations (contract.AnnotationName, contract.AnnotationToken); see docs/api.md.
//
// # What is not exact
//
// "Expires in" is an estimate: the holder's renewTime, written by its side-car's clock, plus the
// lease duration, minus this machine's time. Side-cars never compare clocks (another side-car
// takes over a lease duration after it last saw the Lease change), so the true moment differs by
// the offset between the clocks. A holder whose Lease has expired is still shown as the holder,
// with "expired … ago", until another side-car takes the Lease over.
//
// --watch uses a watch of the API server, not polling, and prints the list again when a holder,
// token or the set of Leases changes, or when an estimated expiry passes; renewals alone do
// not reprint it.
//
// # Errors and exit codes
//
// Every error is one line on standard error: 2 for a usage error (unknown command or flag, bad
// argument), 1 when the command failed (no cluster configured or reachable, unauthorized,
// forbidden, not found) or, for check, when a check failed. Ctrl-C ends a watch with 0, and a request in flight with 130. API
// warnings are not shown (check reports those of its dry run, such as the injector's RBAC
// warning), and Main silences client-go's own logging (klog).
package syncctl
