package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metaparticle-io/sync/e2e/product/internal/chaos"
)

func writeHistory(t *testing.T, dir string, stale bool) string {
	t.Helper()
	t0 := time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	op := func(kind, hold string, token uint64, start, end int, result string) chaos.Op {
		return chaos.Op{Kind: kind, Hold: hold, Pod: strings.Split(hold, "/")[0], Token: token, Start: at(start), End: at(end), Result: result}
	}
	h := &chaos.History{Version: chaos.HistoryVersion, Start: t0, End: at(200), Leases: []chaos.LeaseChange{},
		Faults: []chaos.Fault{{Kind: chaos.FaultKillApp, Pod: "b", Start: at(150), End: at(151), Held: true}},
		Ops: []chaos.Op{
			op(chaos.KindGrant, "a/1/0", 5, 0, 1, chaos.ResultAccepted),
			op(chaos.KindWrite, "a/1/0", 5, 20, 21, chaos.ResultAccepted),
			op(chaos.KindEnd, "a/1/0", 5, 21, 22, chaos.ResultDone),
			op(chaos.KindRelease, "a/1/0", 5, 23, 24, chaos.ResultReleased),
			op(chaos.KindGrant, "b/1/0", 7, 30, 31, chaos.ResultAccepted),
		}}
	if stale {
		h.Ops = append(h.Ops, op(chaos.KindWrite, "a/1/0", 5, 40, 41, chaos.ResultAccepted))
	}
	for i := range h.Ops {
		h.Ops[i].ID = i
	}
	path := filepath.Join(dir, "history.json")
	if err := h.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestRun(t *testing.T) {
	for _, tc := range []struct {
		name     string
		stale    bool
		wantCode int
		wantOut  []string
	}{
		{"passing", false, 0, []string{"0 violations", "wrote "}},
		{"failing", true, 1, []string{"violation: linearizable: #5 (write 0 of hold a/1/0, token 5, accepted)", "got accepted; want rejected"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := writeHistory(t, dir, tc.stale)
			page, porc := filepath.Join(dir, "out.html"), filepath.Join(dir, "porcupine.html")
			var stdout, stderr bytes.Buffer
			if code := run([]string{"-o", page, "-porcupine", porc, path}, &stdout, &stderr); code != tc.wantCode {
				t.Errorf("got exit status %d (stderr %q); want %d", code, stderr.String(), tc.wantCode)
			}
			for _, want := range tc.wantOut {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("got output %q; want it to contain %q", stdout.String(), want)
				}
			}
			for _, f := range []struct{ path, want string }{{page, `data-hold="b/1/0"`}, {page, "<title>Chaos run history: "}, {porc, "<script>"}} {
				b, err := os.ReadFile(f.path)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(string(b), f.want) {
					t.Errorf("%s: got a page without %q", f.path, f.want)
				}
			}
		})
	}
	var stdout, stderr bytes.Buffer
	if code := run(nil, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "usage: history") {
		t.Errorf("no arguments: got %d and %q; want 2 and the usage", code, stderr.String())
	}
	if code := run([]string{filepath.Join(t.TempDir(), "missing.json")}, &stdout, &stderr); code != 2 {
		t.Errorf("a missing file: got %d; want 2", code)
	}
}
