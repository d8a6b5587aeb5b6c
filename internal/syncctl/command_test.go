package syncctl

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/metaparticle-io/sync/wire"
)

func TestDisplayName(t *testing.T) {
	for program, want := range map[string]string{
		"kubectl-sync":                "kubectl sync",
		"/usr/local/bin/kubectl-sync": "kubectl sync",
		`kubectl-sync.exe`:            "kubectl sync",
		"syncctl":                     "syncctl",
		"./bin/syncctl":               "syncctl",
		"":                            "syncctl",
	} {
		if got := displayName(program); got != want {
			t.Errorf("displayName(%q) = %q; want %q", program, got, want)
		}
	}
}

// run runs the CLI as program with args and no cluster configured.
func run(t *testing.T, program string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "missing"))
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	var out, errOut bytes.Buffer
	code = Run(context.Background(), program, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestUsageErrors: every mistake in the command line is one line on stderr and exit code 2,
// naming the command's help as the user types it.
func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, `error: missing command: locks, elections, describe, sidecars, check or version (see 'kubectl sync --help')`},
		{[]string{"sidecars", "-o", "wide"}, `error: unknown output format "wide": use json or yaml (see 'kubectl sync sidecars --help')`},
		{[]string{"health", "x"}, `error: "sidecars" takes no arguments, got "x" (see 'kubectl sync sidecars --help')`},
		{[]string{"lcks"}, `error: unknown command "lcks" (did you mean "locks"?) (see 'kubectl sync --help')`},
		{[]string{"frobnicate"}, `error: unknown command "frobnicate" (see 'kubectl sync --help')`},
		{[]string{"locks", "--bogus"}, `error: unknown flag: --bogus (see 'kubectl sync locks --help')`},
		{[]string{"locks", "extra"}, `error: "locks" takes no arguments, got "extra" (see 'kubectl sync locks --help')`},
		{[]string{"leaders", "-o", "xml"}, `error: unknown output format "xml": use json, yaml, wide, name or jsonpath=<template> (see 'kubectl sync elections --help')`},
		{[]string{"locks", "-l", "a b"}, `error: -l "a b": `},
		{[]string{"locks", "-o", "jsonpath={.items["}, `error: -o jsonpath: `},
		{[]string{"describe"}, `error: describe takes exactly one NAME, got 0 arguments (see 'kubectl sync describe --help')`},
		{[]string{"describe", "a", "b"}, `error: describe takes exactly one NAME, got 2 arguments (see 'kubectl sync describe --help')`},
		{[]string{"describe", "x", "--kind", "mutex"}, `error: unknown --kind "mutex": use lock or election (see 'kubectl sync describe --help')`},
		{[]string{"describe", "x", "-o", "wide"}, `error: unknown output format "wide": use json or yaml (see 'kubectl sync describe --help')`},
		{[]string{"describe", "bad\x01name"}, `error: invalid name "bad\x01name": `},
		{[]string{"--request-timeout"}, `error: flag needs an argument: --request-timeout (see 'kubectl sync --help')`},
	} {
		code, stdout, stderr := run(t, "kubectl-sync", tc.args...)
		if code != 2 || stdout != "" || !strings.HasPrefix(stderr, tc.want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%q: got exit %d, stdout %q, stderr %q; want exit 2, one line starting %q", tc.args, code, stdout, stderr, tc.want)
		}
	}
}

// TestHelp: help goes to stdout with exit code 0 and names the command as the user types it.
func TestHelp(t *testing.T) {
	for _, tc := range []struct {
		program string
		args    []string
		want    []string
	}{
		{"kubectl-sync", []string{"--help"}, []string{"kubectl sync [command]", "kubectl sync locks", "go build -o ~/.local/bin/kubectl-sync ./cmd/syncctl", "--kubeconfig", "--context"}},
		{"/opt/bin/syncctl", []string{"-h"}, []string{"syncctl [command]", "syncctl elections -A --watch"}},
		{"kubectl-sync", []string{"leaders", "--help"}, []string{"kubectl sync elections [flags]", "Aliases:", "leaders", "EXPIRES IN (EST.) is an estimate", "-A, --all-namespaces", "-w, --watch", "-o, --output"}},
		{"kubectl-sync", []string{"help", "describe"}, []string{"kubectl sync describe NAME [flags]", "--kind"}},
	} {
		code, stdout, stderr := run(t, tc.program, tc.args...)
		if code != 0 || stderr != "" {
			t.Errorf("%s %q: got exit %d, stderr %q; want 0 and nothing", tc.program, tc.args, code, stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(stdout, w) {
				t.Errorf("%s %q: usage lacks %q:\n%s", tc.program, tc.args, w, stdout)
			}
		}
	}
}

// TestNoCluster: without any kubeconfig the CLI says so in one line, exit code 1, instead of
// trying localhost:8080.
func TestNoCluster(t *testing.T) {
	for _, args := range [][]string{{"locks"}, {"elections", "-A"}, {"describe", "x"}} {
		code, stdout, stderr := run(t, "syncctl", args...)
		if code != 1 || stdout != "" || stderr != "error: "+errNoConfig.Error()+"\n" {
			t.Errorf("%q: got exit %d, stdout %q, stderr %q; want exit 1 and %q", args, code, stdout, stderr, errNoConfig)
		}
	}
}

// TestInterrupted: Ctrl-C during a request ends the command with 130 and no message.
func TestInterrupted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kubeconfig")
	kc := "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\n" +
		"users: [{name: u, user: {}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errOut bytes.Buffer
	if code := Run(ctx, "syncctl", []string{"--kubeconfig", path, "locks"}, &out, &errOut); code != 130 || out.Len()+errOut.Len() != 0 {
		t.Errorf("got exit %d, stdout %q, stderr %q; want 130 and nothing", code, out.String(), errOut.String())
	}
}

// TestViewChanges: while watching, the list is printed again when the holder or token changes,
// when a Lease comes or goes, and when a hold's estimated expiry passes; not on renewals.
func TestViewChanges(t *testing.T) {
	clk := clocktesting.NewFakeClock(now)
	v := newView(clk)
	held := lease(wire.KindLock, "ns", "a", heldBy("p-0/"+session, "10", time.Minute, 0))
	v.reset(&coordinationv1.LeaseList{Items: []coordinationv1.Lease{*held}})
	if !v.changed() {
		t.Fatal("first list: want changed (never printed)")
	}
	v.markPrinted(clk.Now())
	if v.changed() {
		t.Fatal("right after printing: want unchanged")
	}
	if next, ok := v.nextExpiry(); !ok || !next.Equal(now.Add(15*time.Second)) {
		t.Errorf("nextExpiry: got %v, %t; want now+15s", next, ok)
	}

	step := func(what string, want bool, change func()) {
		t.Helper()
		change()
		if got := v.changed(); got != want {
			t.Errorf("%s: changed() = %t; want %t", what, got, want)
		}
		v.markPrinted(clk.Now())
	}
	step("renewal", false, func() {
		clk.Step(5 * time.Second)
		held.Spec.RenewTime = &metav1.MicroTime{Time: clk.Now()}
		v.set(held)
	})
	step("time passes before the expiry", false, func() { clk.Step(14 * time.Second) })
	step("the estimated expiry passes", true, func() { clk.Step(time.Second) })
	if _, ok := v.nextExpiry(); ok {
		t.Errorf("nextExpiry after the only hold expired: want none")
	}
	step("the holder renews again", true, func() {
		held.Spec.RenewTime = &metav1.MicroTime{Time: clk.Now()}
		v.set(held)
	})
	step("another holder takes over", true, func() {
		held.Spec.HolderIdentity = ptr.To("p-1/" + session)
		held.Annotations["metaparticle.io/fencing-token"] = "11"
		v.set(held)
	})
	other := lease(wire.KindLock, "ns", "b")
	step("a Lease is added", true, func() { v.set(other) })
	step("a Lease is deleted", true, func() { v.remove(other) })
	step("released", true, func() {
		held.Spec.HolderIdentity = nil
		held.Spec.AcquireTime = nil
		v.set(held)
	})
	step("the same list again", false, func() {
		v.reset(&coordinationv1.LeaseList{Items: []coordinationv1.Lease{*held}})
	})
}
