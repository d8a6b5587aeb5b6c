// Package server runs an elector.Engine as the Metaparticle Sync side-car: it serves version 1
// of the lock API (docs/api.md) and the original Metaparticle elector's protocol on loopback,
// /healthz, /readyz and /metrics on the health address, and it is the elector command: its
// settings from flags and environment (ParseSettings) and its life from start to the orderly
// shutdown on SIGTERM (Run).
//
// It is transport only. Every decision is the Engine's, reached through the Engine's exported
// methods; this package maps requests to them and their wire.Error codes to HTTP statuses:
// api.go is version 1, legacy.go the original protocol, health.go the kubelet's and
// Prometheus's endpoints, settings.go and run.go the command.
package server
