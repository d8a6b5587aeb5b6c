// Package sim is a deterministic simulation of the side-car's lock engine: several real
// elector Engines, each behind the real HTTP handler of elector/server, in Pods whose
// applications use the real Go SDK, against an in-memory API server with etcd's semantics, all
// inside a testing/synctest bubble where time is virtual. A seeded driver decides everything
// the Go scheduler or a network would otherwise decide: which API call or watch event is
// delivered next and when, and which faults happen (cuts, freezes, API server restarts, broken
// watches, compactions, crashed applications, misbehaving local clients). Every schedule is
// checked against the invariants of History.check; a failing one prints its seed and trace,
// and `SEED=<n> make sim` runs it again.
//
// What is simulated and what is not is in docs/testing.md.
package sim
