package server

import (
	"flag"
	"os"
	"testing"

	"github.com/metaparticle-io/sync/internal/testenv"
)

// env is the control plane of the integration tests (nil under -short).
var env *testenv.Env

func TestMain(m *testing.M) {
	flag.Parse()
	// Fuzzing needs no control plane.
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		os.Exit(m.Run())
	}
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		os.Exit(m.Run())
	}
	testenv.Main(m, &env)
}
