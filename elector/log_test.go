package elector

import (
	"log/slog"
	"os"
	"testing"

	"github.com/go-logr/logr"
)

// testLogger logs through t when ELECTOR_TEST_LOG is set, and discards otherwise.
func testLogger(t testing.TB) logr.Logger {
	if os.Getenv("ELECTOR_TEST_LOG") == "" {
		return logr.Discard()
	}
	return logr.FromSlogHandler(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.Level(-2)})).WithName(t.Name())
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
