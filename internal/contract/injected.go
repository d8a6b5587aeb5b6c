package contract

// What the injector records on every Pod it injects, for syncctl and users to find them. The
// injector writes these (package webhook); syncctl check reads them.
const (
	// LabelInjected, with the value "true", is set on every Pod the injector injected, to select
	// them: kubectl get pods -A -l metaparticle.io/injected=true.
	LabelInjected = "metaparticle.io/injected"
	// AnnotationInjectedImage is the side-car image the Pod got.
	AnnotationInjectedImage = "metaparticle.io/injected-image"
	// AnnotationInjectorVersion is the release of the injector that added the side-car
	// (internal/version), so that Pods with an older side-car can be found after an upgrade.
	AnnotationInjectorVersion = "metaparticle.io/injector-version"
)

// WebhookNameSuffix ends the name of each webhook of the injector's
// MutatingWebhookConfiguration (inject.sync.metaparticle.io,
// inject-namespace.sync.metaparticle.io), whatever the release's name.
const WebhookNameSuffix = ".sync.metaparticle.io"

// SidecarLeaseVerbs are the verbs the side-car uses on coordination.k8s.io Leases in its own
// namespace: the watches of the Leases in use (list, watch), the first grant of a name (create),
// grants, renewals and releases (update), and the deletion of idle Leases (IdleLeaseVerb).
// deploy/rbac/sidecar-role.yaml and the chart grant exactly these; the injector's RBAC warning
// and syncctl check ask for them.
var SidecarLeaseVerbs = []string{"list", "watch", "create", "update", IdleLeaseVerb}

// IdleLeaseVerb is the one verb the side-car can do without: without it, idle Leases are not
// deleted and accumulate in the namespace, and locks still work.
const IdleLeaseVerb = "delete"

// AnnotationInject is the Pod annotation that opts a Pod in ("true") or out ("false"); package
// webhook documents it (webhook.AnnotationInject).
const AnnotationInject = "metaparticle.io/sync"

// SidecarClusterRole is the default name of the ClusterRole that grants the side-car
// SidecarLeaseVerbs in the chart, which a RoleBinding per
// namespace binds to the service accounts of its Pods.
const SidecarClusterRole = "metaparticle-sync-sidecar"
