package contract

// Environment variables of the side-car container. The injector sets the first three from the
// downward API (fieldRef metadata.name, metadata.namespace and metadata.uid) and the timing and
// log level from its configuration and the Pod's annotations; every one of them mirrors a flag
// of the side-car command (cmd/elector --help). The lock API's address is wire.EnvAddress, the
// variable the application reads too.
const (
	EnvPodName         = "METAPARTICLE_SYNC_POD_NAME"
	EnvPodNamespace    = "METAPARTICLE_SYNC_POD_NAMESPACE"
	EnvPodUID          = "METAPARTICLE_SYNC_POD_UID"
	EnvHealthAddress   = "METAPARTICLE_SYNC_HEALTH_ADDR"
	EnvLeaseDuration   = "METAPARTICLE_SYNC_LEASE_DURATION"
	EnvRenewDeadline   = "METAPARTICLE_SYNC_RENEW_DEADLINE"
	EnvRenewPeriod     = "METAPARTICLE_SYNC_RENEW_PERIOD"
	EnvRetryPeriod     = "METAPARTICLE_SYNC_RETRY_PERIOD"
	EnvShutdownTimeout = "METAPARTICLE_SYNC_SHUTDOWN_TIMEOUT"
	EnvLogLevel        = "METAPARTICLE_SYNC_LOG_LEVEL"
	EnvKubeAPIQPS      = "METAPARTICLE_SYNC_KUBE_API_QPS"
	EnvKubeAPIBurst    = "METAPARTICLE_SYNC_KUBE_API_BURST"
	EnvMode            = "METAPARTICLE_SYNC_MODE"

	EnvMaxSessions        = "METAPARTICLE_SYNC_MAX_SESSIONS"
	EnvMaxNamesPerSession = "METAPARTICLE_SYNC_MAX_NAMES_PER_SESSION"
	EnvMaxPendingAcquires = "METAPARTICLE_SYNC_MAX_PENDING_ACQUIRES"
	EnvMaxWatches         = "METAPARTICLE_SYNC_MAX_WATCHES"
	EnvMaxNames           = "METAPARTICLE_SYNC_MAX_NAMES"
	EnvMetricsNames       = "METAPARTICLE_SYNC_METRICS_NAMES"

	EnvDeleteIdleLeasesAfter = "METAPARTICLE_SYNC_DELETE_IDLE_LEASES_AFTER"
	EnvWatchScope            = "METAPARTICLE_SYNC_WATCH_SCOPE"
)

// The side-car's watch scopes (EnvWatchScope, --watch-scope).
const (
	// WatchScopeNames: a watch of each Lease of a name in use (the default).
	WatchScopeNames = "names"
	// WatchScopeNamespace: one watch of every managed Lease of the namespace.
	WatchScopeNamespace = "namespace"
)

// How the side-car runs in its Pod (EnvMode), which decides what its shutdown may release.
const (
	// ModeNative: an init container with restartPolicy Always. The kubelet stops it only after
	// every application container has exited, so at its SIGTERM no client of the Pod is left
	// and it releases every hold at once.
	ModeNative = "native"
	// ModeClassic: a regular container (the injector's classic mode, or a side-car listed by
	// hand). Its SIGTERM comes with the application's, so an application may still be using a
	// hold that only its next request can be told about (the original protocol's clients):
	// such holds are released only once their client was told, or stopped asking, or not at
	// all (they expire). The default, because it is the safe one.
	ModeClassic = "classic"
)

// LogLevels maps the log level names that the injector accepts (flag and annotation) to the
// side-car's numeric verbosity (EnvLogLevel): "info" logs every state change, "debug" also lost
// races and every renewal.
var LogLevels = map[string]int{"info": 0, "debug": 2}

// SidecarContainer is the name of the injected side-car container, which tools (syncctl) look
// for in Pods.
const SidecarContainer = "metaparticle-sync"

// HealthPortName names the side-car container's port of /healthz, /readyz and /metrics.
const HealthPortName = "sync-health"

// HealthPort returns the port of the side-car's /healthz, /readyz and /metrics for a side-car
// whose lock API listens on apiPort: the next one.
func HealthPort(apiPort int32) int32 { return apiPort + 1 }
