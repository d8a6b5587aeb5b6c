// Package contract is what the injector (package webhook), the side-car (package elector) and
// syncctl must agree on and that is not the application's business: the environment variables
// the injector sets and the side-car reads, the side-car's timing defaults and the rules that
// make a timing safe, and how locks and elections are stored in Leases (names, labels,
// annotations).
//
// The application's contract with its side-car (HTTP paths, JSON bodies, EnvAddress) is package
// wire, which this package builds on. Like wire, contract imports only the standard library, so
// that syncctl can compute Lease names without linking the side-car, and so that webhook and
// elector can share one definition without importing each other.
package contract
