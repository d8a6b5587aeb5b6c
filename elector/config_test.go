package elector

import (
	"bytes"
	"flag"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/metaparticle-io/sync/wire"
)

func TestConfigValidate(t *testing.T) {
	valid := Config{PodName: "web-0", Namespace: "team-a"}
	for _, tc := range []struct {
		name    string
		change  func(*Config)
		wantErr string // substring; empty means valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"short timings", func(c *Config) {
			c.LeaseDuration, c.RenewDeadline, c.RenewPeriod, c.RetryPeriod = 3*time.Second, 2*time.Second, time.Second, 200*time.Millisecond
		}, ""},
		{"localhost", func(c *Config) { c.ListenAddress = "localhost:9000" }, ""},
		{"IPv6 loopback", func(c *Config) { c.ListenAddress = "[::1]:9000" }, ""},
		{"no pod name", func(c *Config) { c.PodName = "" }, EnvPodName},
		{"slash in pod name", func(c *Config) { c.PodName = "a/b" }, "must not contain '/'"},
		{"no namespace", func(c *Config) { c.Namespace = "" }, EnvPodNamespace},
		{"bad namespace", func(c *Config) { c.Namespace = "Team_A" }, "not a valid namespace"},
		{"listen on all interfaces", func(c *Config) { c.ListenAddress = ":13131" }, "not a loopback address"},
		{"listen on a Pod IP", func(c *Config) { c.ListenAddress = "10.0.0.7:13131" }, "not a loopback address"},
		{"listen without port", func(c *Config) { c.ListenAddress = "127.0.0.1" }, "listen address"},
		{"bad health address", func(c *Config) { c.HealthAddress = "nope" }, "health address"},
		{"renew deadline = lease duration", func(c *Config) { c.RenewDeadline = c.withDefaults().LeaseDuration }, "renew deadline 15s must be less than lease duration 15s"},
		{"renew period = renew deadline", func(c *Config) { c.RenewPeriod = 10 * time.Second }, "renew period 10s must be less than renew deadline 10s"},
		{"retry above renew period", func(c *Config) { c.RetryPeriod = 6 * time.Second }, "retry period 6s must not exceed renew period 5s"},
		{"retry too small", func(c *Config) { c.RetryPeriod = time.Millisecond }, "at least 10ms"},
		{"fractional lease duration", func(c *Config) { c.LeaseDuration = 15500 * time.Millisecond }, "whole number of seconds"},
		{"lease duration too long", func(c *Config) { c.LeaseDuration = 2 * time.Hour }, "must lie within"},
		{"negative", func(c *Config) { c.RetryPeriod = -time.Second }, "must not be negative"},
		{"negative shutdown timeout", func(c *Config) { c.ShutdownTimeout = -time.Second }, "shutdown timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := valid
			tc.change(&c)
			err := c.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Validate: %v; want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Validate: %v; want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestNewEngineRefusesInvalidConfig(t *testing.T) {
	_, err := NewEngine(Config{PodName: "p", Namespace: "n", LeaseDuration: 5 * time.Second}, fakeLeases(newFakeAPI(t).cs, "n"), Options{})
	if err == nil || !strings.Contains(err.Error(), "renew deadline 10s must be less than lease duration 5s") {
		t.Errorf("NewEngine: %v; want the timing rule explained", err)
	}
}

func TestParseSettings(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		env     map[string]string
		want    Settings
		wantErr string
	}{
		{"nothing", nil, nil, Settings{}, ""},
		{"environment", nil, map[string]string{
			EnvPodName: "web-0", EnvPodNamespace: "team-a", EnvPodUID: "u-1", wire.EnvAddress: "127.0.0.1:9",
			EnvHealthAddress: ":8", EnvLeaseDuration: "20s", EnvRenewDeadline: "12s", EnvRenewPeriod: "4s",
			EnvRetryPeriod: "500ms", EnvShutdownTimeout: "3s", EnvLogLevel: "2", "KUBECONFIG": "/k",
		}, Settings{Config: Config{PodName: "web-0", Namespace: "team-a", PodUID: "u-1", ListenAddress: "127.0.0.1:9",
			HealthAddress: ":8", LeaseDuration: 20 * time.Second, RenewDeadline: 12 * time.Second, RenewPeriod: 4 * time.Second,
			RetryPeriod: 500 * time.Millisecond, ShutdownTimeout: 3 * time.Second}, Kubeconfig: "/k", LogLevel: 2}, ""},
		{"flags win over environment", []string{"--pod-name=flag", "--lease-duration", "30s", "-v=1"},
			map[string]string{EnvPodName: "env", EnvLeaseDuration: "20s", EnvLogLevel: "3"},
			Settings{Config: Config{PodName: "flag", LeaseDuration: 30 * time.Second}, LogLevel: 1}, ""},
		{"bad duration flag", []string{"--renew-period=5"}, nil, Settings{}, "not a duration"},
		{"bad duration variable", nil, map[string]string{EnvRetryPeriod: "soon"}, Settings{}, EnvRetryPeriod},
		{"bad level", nil, map[string]string{EnvLogLevel: "loud"}, Settings{}, "not an integer"},
		{"unknown flag", []string{"--lease=5s"}, nil, Settings{}, "flag provided but not defined"},
		{"stray argument", []string{"serve"}, nil, Settings{}, "unexpected arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSettings(tc.args, func(k string) string { return tc.env[k] }, &bytes.Buffer{})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("ParseSettings: %v; want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSettings: %v", err)
			}
			if got != tc.want {
				t.Errorf("ParseSettings = %+v; want %+v", got, tc.want)
			}
		})
	}
}

func TestHelpNamesEveryVariable(t *testing.T) {
	var out bytes.Buffer
	_, err := ParseSettings([]string{"--help"}, func(string) string { return "" }, &out)
	if err != flag.ErrHelp {
		t.Fatalf("ParseSettings(--help): %v; want flag.ErrHelp", err)
	}
	for _, want := range []string{EnvPodName, EnvPodNamespace, EnvPodUID, wire.EnvAddress, EnvHealthAddress, EnvLeaseDuration,
		EnvRenewDeadline, EnvRenewPeriod, EnvRetryPeriod, EnvShutdownTimeout, EnvLogLevel, "--lease-duration", "Default 15s"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help does not mention %s", want)
		}
	}
	for i, line := range strings.Split(out.String(), "\n") {
		if len(line) > 100 {
			t.Errorf("--help line %d is %d characters long; want at most 100", i+1, len(line))
		}
	}
}

func TestSettingsComplete(t *testing.T) {
	s := Settings{}
	s.complete(func(string) ([]byte, error) { return []byte("ns-from-file\n"), nil }, func() (string, error) { return "host-0", nil })
	if s.Namespace != "ns-from-file" || s.PodName != "host-0" {
		t.Errorf("complete: %+v; want the namespace file and host name", s.Config)
	}
	s = Settings{Config: Config{PodName: "given", Namespace: "given"}}
	s.complete(func(string) ([]byte, error) { return nil, os.ErrNotExist }, func() (string, error) { return "host-0", nil })
	if s.Namespace != "given" || s.PodName != "given" {
		t.Errorf("complete overrode given values: %+v", s.Config)
	}
}

func TestLeaseName(t *testing.T) {
	long := strings.Repeat("Ab-", 100)
	for _, tc := range []struct {
		kind wire.Kind
		name string
		want string // a regexp the Lease name must match
	}{
		{wire.KindLock, "orders", `^lock-orders-[0-9a-f]{16}$`},
		{wire.KindElection, "orders", `^election-orders-[0-9a-f]{16}$`},
		{wire.KindLock, "Orders/EU.west", `^lock-orders-eu-west-[0-9a-f]{16}$`},
		{wire.KindLock, "--a__b--", `^lock-a-b-[0-9a-f]{16}$`},
		{wire.KindLock, "锁", `^lock-[0-9a-f]{16}$`},
		{wire.KindLock, ".", `^lock-[0-9a-f]{16}$`},
		{wire.KindLock, long, `^lock-ab(-ab){12}-a-[0-9a-f]{16}$`},
		{wire.KindLock, strings.Repeat("x", wire.MaxNameLength), `^lock-x{40}-[0-9a-f]{16}$`},
	} {
		got := LeaseName(tc.kind, tc.name)
		if !regexp.MustCompile(tc.want).MatchString(got) {
			t.Errorf("LeaseName(%s, %q) = %q; want a match of %s", tc.kind, tc.name, got, tc.want)
		}
		if msgs := validation.IsDNS1123Label(got); len(msgs) > 0 {
			t.Errorf("LeaseName(%s, %q) = %q is not a DNS-1123 label: %v", tc.kind, tc.name, got, msgs)
		}
		if len(got) > 66 {
			t.Errorf("LeaseName(%s, %q) is %d characters long; want at most 66", tc.kind, tc.name, len(got))
		}
		if again := LeaseName(tc.kind, tc.name); again != got {
			t.Errorf("LeaseName is not deterministic: %q then %q", got, again)
		}
	}
}

func TestLeaseNamesNeverCollideOnLookalikes(t *testing.T) {
	foo := LeaseName(wire.KindLock, "foo")
	names := []string{"foo", "Foo", "FOO", "foo!", "foo ", " foo", "foo-", "f.o.o", "foo\u00a0", strings.TrimPrefix(foo, "lock-")}
	seen := map[string]string{}
	for _, kind := range []wire.Kind{wire.KindLock, wire.KindElection} {
		for _, n := range names {
			l := LeaseName(kind, n)
			if prev, dup := seen[l]; dup {
				t.Errorf("%s %q and %q share the Lease %s", kind, n, prev, l)
			}
			seen[l] = string(kind) + " " + n
		}
	}
}

func TestParseSettingsAPIRateLimits(t *testing.T) {
	tests := []struct {
		args      []string
		env       map[string]string
		qps, brst int
		wantErr   string
	}{
		{nil, nil, 0, 0, ""},
		{[]string{"--kube-api-qps", "200", "--kube-api-burst", "400"}, nil, 200, 400, ""},
		{nil, map[string]string{EnvKubeAPIQPS: "80", EnvKubeAPIBurst: "90"}, 80, 90, ""},
		{[]string{"--kube-api-qps", "-1"}, nil, 0, 0, "must be positive"},
		{nil, map[string]string{EnvKubeAPIBurst: "lots"}, 0, 0, "not an integer"},
	}
	for _, tt := range tests {
		s, err := ParseSettings(tt.args, func(k string) string { return tt.env[k] }, io.Discard)
		switch {
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%v %v: got error %v; want one containing %q", tt.args, tt.env, err, tt.wantErr)
		case tt.wantErr == "" && err != nil:
			t.Errorf("%v %v: got error %v; want none", tt.args, tt.env, err)
		case tt.wantErr == "" && (s.KubeAPIQPS != tt.qps || s.KubeAPIBurst != tt.brst):
			t.Errorf("%v %v: got qps %d burst %d; want %d and %d", tt.args, tt.env, s.KubeAPIQPS, s.KubeAPIBurst, tt.qps, tt.brst)
		}
	}
}
