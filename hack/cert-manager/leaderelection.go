package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	logf "github.com/cert-manager/cert-manager/pkg/logs"
	"github.com/cert-manager/cert-manager/pkg/util"
)

// leaseName is the Lease this program elects a leader with. It differs from cert-manager's own
// ("cert-manager-controller") so that it never contends with a real installation.
const leaseName = "cert-manager-test-controllers"

// runElected runs fn while this process holds the Lease, and returns when ctx ends or fn
// returns. Losing the Lease while ctx is live is an error.
func runElected(ctx context.Context, cfg *rest.Config, namespace string, fn func(context.Context) error) error {
	log := logf.FromContext(ctx, "leader-election")
	cs, err := kubernetes.NewForConfig(util.RestConfigWithUserAgent(cfg, "leader-election"))
	if err != nil {
		return err
	}
	host, _ := os.Hostname()
	id := host + "_" + rand.String(8)
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, namespace, leaseName,
		cs.CoreV1(), cs.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: id})
	if err != nil {
		return fmt.Errorf("creating the leader-election lock: %w", err)
	}

	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		started atomic.Bool
		fnErr   error
		fnDone  = make(chan struct{})
	)
	elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   15 * time.Second,
		RenewDeadline:   10 * time.Second,
		RetryPeriod:     2 * time.Second,
		ReleaseOnCancel: true,
		Name:            leaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			// Its context ends when elector.Run returns, that is when ctx ends or the Lease is lost.
			OnStartedLeading: func(ctx context.Context) {
				started.Store(true)
				log.Info("elected leader", "lease", namespace+"/"+leaseName, "identity", id)
				fnErr = fn(ctx)
				close(fnDone)
				cancel()
			},
			OnStoppedLeading: func() {},
		},
	})
	if err != nil {
		return err
	}
	log.Info("waiting to be elected leader", "lease", namespace+"/"+leaseName, "identity", id)
	elector.Run(ctx)
	if !started.Load() {
		return nil
	}
	<-fnDone
	if fnErr == nil && parent.Err() == nil {
		fnErr = errors.New("lost the leader-election Lease")
	}
	return fnErr
}
