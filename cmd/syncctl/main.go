// Command syncctl shows who holds the locks and leads the elections of Metaparticle Sync. Built
// under the name kubectl-sync and put on the PATH, it is the kubectl plugin "kubectl sync":
//
//	go build -o ~/.local/bin/kubectl-sync ./cmd/syncctl
//
// Run it with --help for its commands. The code is in package internal/syncctl.
package main

import "github.com/metaparticle-io/sync/internal/syncctl"

func main() { syncctl.Main() }
