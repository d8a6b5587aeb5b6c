// Command clientgo-holder is the baseline of the side-car footprint benchmark: the smallest
// program that holds Leases with client-go's leader election (one LeaderElector with a LeaseLock
// per Lease, all on one client with the side-car's rate limits). It prints "ready" once it
// reached the API server and "held N" once it leads all N Leases, then runs until killed.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
)

func main() {
	var (
		kubeconfig = flag.String("kubeconfig", "", "kubeconfig file")
		namespace  = flag.String("namespace", "default", "namespace of the Leases")
		prefix     = flag.String("prefix", "clientgo", "Lease name prefix")
		leases     = flag.Int("leases", 1, "number of Leases to hold")
		leaseDur   = flag.Duration("lease-duration", 15*time.Second, "LeaseDuration")
		renew      = flag.Duration("renew-deadline", 10*time.Second, "RenewDeadline")
		retry      = flag.Duration("retry-period", 2*time.Second, "RetryPeriod")
	)
	flag.Parse()
	klog.SetLogger(logr.Discard())
	err := run(*kubeconfig, *namespace, *prefix, *leases, *leaseDur, *renew, *retry) // returns only on failure
	fmt.Fprintln(os.Stderr, "clientgo-holder:", err)
	os.Exit(1)
}

// run holds the Leases until the process is killed; it returns only on failure.
func run(kubeconfig, ns, prefix string, n int, leaseDur, renew, retry time.Duration) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 50, 100
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	if _, err := cs.Discovery().ServerVersion(); err != nil {
		return err
	}
	fmt.Println("ready")
	host, _ := os.Hostname()
	var held atomic.Int64
	for i := 0; i < n; i++ {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: &resourcelock.LeaseLock{
				LeaseMeta:  metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("%s-%d", prefix, i)},
				Client:     cs.CoordinationV1(),
				LockConfig: resourcelock.ResourceLockConfig{Identity: fmt.Sprintf("%s-%d", host, os.Getpid())},
			},
			LeaseDuration:   leaseDur,
			RenewDeadline:   renew,
			RetryPeriod:     retry,
			ReleaseOnCancel: true,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(context.Context) {
					if held.Add(1) == int64(n) {
						fmt.Printf("held %d\n", n)
					}
				},
				OnStoppedLeading: func() {},
			},
		})
		if err != nil {
			return err
		}
		go le.Run(context.Background())
	}
	select {}
}
