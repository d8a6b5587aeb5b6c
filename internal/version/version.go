// Package version is the release of Metaparticle Sync that a binary belongs to: the chart's
// appVersion, which is also the tag of the images (make images). The injector records it on
// every Pod it injects (metaparticle.io/injector-version), so that Pods with a side-car older
// than the injector can be found after an upgrade.
package version

// Version is the release, "0.1.0". A build may set it with
// -ldflags "-X github.com/metaparticle-io/sync/internal/version.Version=<v>"; the test keeps the
// default equal to charts/metaparticle-sync/Chart.yaml's appVersion.
var Version = "0.1.0"
