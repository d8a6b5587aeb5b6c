package server

import (
	"bytes"
	"flag"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/metaparticle-io/sync/elector"
	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

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
			contract.EnvPodName: "web-0", contract.EnvPodNamespace: "team-a", contract.EnvPodUID: "u-1", wire.EnvAddress: "127.0.0.1:9",
			contract.EnvHealthAddress: ":8", contract.EnvLeaseDuration: "20s", contract.EnvRenewDeadline: "12s", contract.EnvRenewPeriod: "4s",
			contract.EnvRetryPeriod: "500ms", contract.EnvShutdownTimeout: "3s", contract.EnvLogLevel: "2", "KUBECONFIG": "/k",
		}, Settings{Config: elector.Config{PodName: "web-0", Namespace: "team-a", PodUID: "u-1", ListenAddress: "127.0.0.1:9",
			HealthAddress: ":8", LeaseDuration: 20 * time.Second, RenewDeadline: 12 * time.Second, RenewPeriod: 4 * time.Second,
			RetryPeriod: 500 * time.Millisecond, ShutdownTimeout: 3 * time.Second}, Kubeconfig: "/k", LogLevel: 2}, ""},
		{"flags win over environment", []string{"--pod-name=flag", "--lease-duration", "30s", "-v=1"},
			map[string]string{contract.EnvPodName: "env", contract.EnvLeaseDuration: "20s", contract.EnvLogLevel: "3"},
			Settings{Config: elector.Config{PodName: "flag", LeaseDuration: 30 * time.Second}, LogLevel: 1}, ""},
		{"limits", []string{"--max-sessions=8", "--max-watches", "3"},
			map[string]string{contract.EnvMaxNamesPerSession: "5", contract.EnvMaxPendingAcquires: "7", contract.EnvMaxSessions: "9"},
			Settings{Config: elector.Config{Limits: elector.Limits{MaxSessions: 8, MaxNamesPerSession: 5, MaxPendingAcquires: 7, MaxWatches: 3}}}, ""},
		{"idle Leases", []string{"--delete-idle-leases-after=1h"}, nil, Settings{Config: elector.Config{DeleteIdleAfter: time.Hour}}, ""},
		{"idle Leases kept", nil, map[string]string{contract.EnvDeleteIdleLeasesAfter: "-1s"}, Settings{Config: elector.Config{DeleteIdleAfter: -time.Second}}, ""},
		{"watch scope", []string{"--watch-scope=namespace"}, nil, Settings{Config: elector.Config{WatchScope: elector.WatchNamespace}}, ""},
		{"watch scope variable", nil, map[string]string{contract.EnvWatchScope: "names"}, Settings{Config: elector.Config{WatchScope: elector.WatchNames}}, ""},
		{"max names", []string{"--max-names=500"}, nil, Settings{Config: elector.Config{Limits: elector.Limits{MaxNames: 500}}}, ""},
		{"max names variable", nil, map[string]string{contract.EnvMaxNames: "300"}, Settings{Config: elector.Config{Limits: elector.Limits{MaxNames: 300}}}, ""},
		{"bad duration flag", []string{"--renew-period=5"}, nil, Settings{}, `invalid value "5" for flag -renew-period`},
		{"bad duration variable", nil, map[string]string{contract.EnvRetryPeriod: "soon"}, Settings{}, contract.EnvRetryPeriod},
		{"bad level", nil, map[string]string{contract.EnvLogLevel: "loud"}, Settings{}, contract.EnvLogLevel + `="loud": invalid value for --v`},
		{"unknown flag", []string{"--lease=5s"}, nil, Settings{}, "flag provided but not defined"},
		{"stray argument", []string{"serve"}, nil, Settings{}, "unexpected arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSettings(tc.args, func(k string) string { return tc.env[k] }, &bytes.Buffer{})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("ParseSettings: got %v; want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSettings: got %v; want nil", err)
			}
			if got != tc.want {
				t.Errorf("ParseSettings: got %+v; want %+v", got, tc.want)
			}
		})
	}
}

func TestHelpNamesEveryVariable(t *testing.T) {
	var out bytes.Buffer
	_, err := ParseSettings([]string{"--help"}, func(string) string { return "" }, &out)
	if err != flag.ErrHelp {
		t.Fatalf("ParseSettings(--help): got %v; want flag.ErrHelp", err)
	}
	for _, want := range []string{contract.EnvPodName, contract.EnvPodNamespace, contract.EnvPodUID, wire.EnvAddress, contract.EnvHealthAddress, contract.EnvLeaseDuration,
		contract.EnvRenewDeadline, contract.EnvRenewPeriod, contract.EnvRetryPeriod, contract.EnvShutdownTimeout, contract.EnvLogLevel, contract.EnvMaxSessions, contract.EnvMaxNamesPerSession,
		contract.EnvMaxPendingAcquires, contract.EnvMaxWatches, "--lease-duration", "Default 15s"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("got --help without %s; want it mentioned", want)
		}
	}
	for i, line := range strings.Split(out.String(), "\n") {
		if len(line) > 100 {
			t.Errorf("--help line %d: got %d characters; want at most 100", i+1, len(line))
		}
	}
}

func TestSettingsComplete(t *testing.T) {
	s := Settings{}
	s.complete(func(string) ([]byte, error) { return []byte("ns-from-file\n"), nil }, func() (string, error) { return "host-0", nil })
	if s.Namespace != "ns-from-file" || s.PodName != "host-0" {
		t.Errorf("complete: got %+v; want the namespace file and host name", s.Config)
	}
	s = Settings{Config: elector.Config{PodName: "given", Namespace: "given"}}
	s.complete(func(string) ([]byte, error) { return nil, os.ErrNotExist }, func() (string, error) { return "host-0", nil })
	if s.Namespace != "given" || s.PodName != "given" {
		t.Errorf("complete: got %+v; want the given values kept", s.Config)
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
		{nil, map[string]string{contract.EnvKubeAPIQPS: "80", contract.EnvKubeAPIBurst: "90"}, 80, 90, ""},
		{[]string{"--kube-api-qps", "-1"}, nil, 0, 0, "must be positive"},
		{nil, map[string]string{contract.EnvKubeAPIBurst: "lots"}, 0, 0, "invalid value for --kube-api-burst"},
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
