package elector

import (
	"strings"
	"testing"
	"time"

	"github.com/metaparticle-io/sync/elector/internal/leasefake"
	"github.com/metaparticle-io/sync/internal/contract"
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
		{"no pod name", func(c *Config) { c.PodName = "" }, contract.EnvPodName},
		{"slash in pod name", func(c *Config) { c.PodName = "a/b" }, "must not contain '/'"},
		{"no namespace", func(c *Config) { c.Namespace = "" }, contract.EnvPodNamespace},
		{"bad namespace", func(c *Config) { c.Namespace = "Team_A" }, "not a valid namespace"},
		{"listen on all interfaces", func(c *Config) { c.ListenAddress = ":13131" }, "not a loopback address"},
		{"listen on a Pod IP", func(c *Config) { c.ListenAddress = "10.0.0.7:13131" }, "not a loopback address"},
		{"watch scope namespace", func(c *Config) { c.WatchScope = WatchNamespace }, ""},
		{"bad pod UID", func(c *Config) { c.PodUID = "not a uid" }, "not a valid label value"},
		{"unknown watch scope", func(c *Config) { c.WatchScope = "cluster" }, `watch scope "cluster" must be`},
		{"listen without port", func(c *Config) { c.ListenAddress = "127.0.0.1" }, "listen address"},
		{"bad health address", func(c *Config) { c.HealthAddress = "nope" }, "health address"},
		{"renew deadline = lease duration", func(c *Config) { c.RenewDeadline = c.withDefaults().LeaseDuration }, "renew deadline 15s must be less than lease duration 15s"},
		{"renew period = renew deadline", func(c *Config) { c.RenewPeriod = 10 * time.Second }, "renew period 10s must be less than renew deadline 10s"},
		{"retry above renew period", func(c *Config) { c.RetryPeriod = 6 * time.Second }, "retry period 6s must not exceed renew period 5s"},
		{"retry too small", func(c *Config) { c.RetryPeriod = time.Millisecond }, "at least 10ms"},
		{"fractional lease duration", func(c *Config) { c.LeaseDuration = 15500 * time.Millisecond }, "whole number of seconds"},
		{"lease duration too long", func(c *Config) { c.LeaseDuration = 2 * time.Hour }, "must lie within"},
		{"negative", func(c *Config) { c.RetryPeriod = -time.Second }, "must not be negative"},
		{"a lease duration longer than the default idle time", func(c *Config) {
			c.LeaseDuration, c.RenewDeadline, c.RenewPeriod, c.RetryPeriod = time.Hour, 50*time.Minute, 10*time.Minute, time.Minute
		}, ""},
		{"never delete idle Leases", func(c *Config) { c.DeleteIdleAfter = -time.Second }, ""},
		{"delete idle Leases after a lease duration", func(c *Config) { c.DeleteIdleAfter = 15 * time.Second }, ""},
		{"delete idle Leases sooner than a lease duration", func(c *Config) { c.DeleteIdleAfter = 14 * time.Second }, "delete-idle-leases-after 14s must be at least the lease duration 15s"},
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
	_, err := NewEngine(Config{PodName: "p", Namespace: "n", LeaseDuration: 5 * time.Second}, leasefake.New(t).Leases("n"), Options{})
	if err == nil || !strings.Contains(err.Error(), "renew deadline 10s must be less than lease duration 5s") {
		t.Errorf("NewEngine: %v; want the timing rule explained", err)
	}
}
