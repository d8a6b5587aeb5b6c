package localcluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseEnv(t *testing.T) {
	vars, err := ParseEnv([]byte("# comment\n\nKUBECONFIG=/var/run/x/kubeconfig\nPOD_CIDR=10.217.0.0/24\nEMPTY=\nWITH_EQUALS=a=b\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"KUBECONFIG": "/var/run/x/kubeconfig", "POD_CIDR": "10.217.0.0/24", "EMPTY": "", "WITH_EQUALS": "a=b"}
	if len(vars) != len(want) {
		t.Fatalf("ParseEnv = %v, want %v", vars, want)
	}
	for k, v := range want {
		if got, ok := vars[k]; !ok || got != v {
			t.Errorf("%s = %q (present %v), want %q", k, got, ok, v)
		}
	}
	for _, bad := range []string{"NOEQUALS\n", "=value\n"} {
		if _, err := ParseEnv([]byte(bad)); err == nil {
			t.Errorf("ParseEnv(%q) accepted a malformed line", bad)
		}
	}
}

func TestLoadReportsWhatIsMissing(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(filepath.Join(dir, "missing.env")); err == nil || !strings.Contains(err.Error(), "make cluster-up") {
		t.Errorf("Load of a missing file = %v, want a hint to run make cluster-up", err)
	}
	p := filepath.Join(dir, "cluster.env")
	if err := os.WriteFile(p, []byte("KUBECONFIG=/x\nCTR=/usr/bin/ctr\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "CONTAINERD_ADDRESS is missing") {
		t.Errorf("Load of an incomplete file = %v, want CONTAINERD_ADDRESS reported missing", err)
	}
}

func TestSanitize(t *testing.T) {
	for in, want := range map[string]string{
		"TestFoo/bar_baz":       "testfoo-bar-baz",
		"--Weird__Name--":       "weird-name",
		strings.Repeat("a", 60): strings.Repeat("a", 40),
	} {
		if got := sanitize(in); got != want {
			t.Errorf("sanitize(%q) = %q, want %q", in, got, want)
		}
	}
}
