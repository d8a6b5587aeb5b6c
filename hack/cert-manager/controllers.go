package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"

	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	logf "github.com/cert-manager/cert-manager/pkg/logs"

	// Each of these registers its controller in controllerpkg.Known() from its init function.
	crapprover "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	crca "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	crselfsigned "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	"github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	"github.com/cert-manager/cert-manager/pkg/controller/issuers"

	// The issuer types the issuers and clusterissuers controllers can set up (they register
	// themselves with pkg/issuer from their init functions).
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

// controllerNames are the cert-manager controllers this program runs, by their registered names.
var controllerNames = []string{
	issuers.ControllerName,
	clusterissuers.ControllerName,
	crapprover.ControllerName,
	crselfsigned.CRControllerName,
	crca.CRControllerName,
	trigger.ControllerName,
	keymanager.ControllerName,
	requestmanager.ControllerName,
	issuing.ControllerName,
	readiness.ControllerName,
	revisionmanager.ControllerName,
}

// copiedAnnotationPrefixes is cert-manager's default: copy every Certificate annotation to its
// CertificateRequests except those of kubectl, Flux and Argo CD.
var copiedAnnotationPrefixes = []string{"*", "-kubectl.kubernetes.io/", "-fluxcd.io/", "-argocd.argoproj.io/"}

// runControllers builds cert-manager's controller context the way its controller binary does,
// constructs the selected controllers from the registry, starts the shared informers and runs
// the control loops until ctx ends.
func runControllers(ctx context.Context, o options) error {
	log := logf.FromContext(ctx, "controller")
	ctx = logf.NewContext(ctx, log)

	factory, err := controllerpkg.NewContextFactory(ctx, controllerpkg.ContextOptions{
		Kubeconfig: o.kubeconfig,
		// Only used when the API server has no API Priority and Fairness.
		KubernetesAPIQPS:   20,
		KubernetesAPIBurst: 50,
		Namespace:          o.namespace,
		IssuerOptions: controllerpkg.IssuerOptions{
			ClusterResourceNamespace: o.clusterResourceNamespace,
		},
		CertificateOptions: controllerpkg.CertificateOptions{
			CopiedAnnotationPrefixes: copiedAnnotationPrefixes,
			// cert-manager's defaults: after a failed issuance, retry after 1h, doubling up to 32h.
			CertificateRequestMinimumBackoffDuration: time.Hour,
			CertificateRequestMaximumBackoffDuration: 32 * time.Hour,
		},
	})
	if err != nil {
		return fmt.Errorf("building the cert-manager controller context: %w", err)
	}
	// The base context holds the informer factories that every controller's context shares.
	base, err := factory.Build()
	if err != nil {
		return err
	}

	known := controllerpkg.Known()
	loops := map[string]controllerpkg.Interface{}
	for _, name := range controllerNames {
		if name == clusterissuers.ControllerName && o.namespace != "" {
			log.Info("not running clusterissuers: scoped to one namespace", "namespace", o.namespace)
			continue
		}
		construct, ok := known[name]
		if !ok {
			return fmt.Errorf("controller %q is not registered in this cert-manager version", name)
		}
		// Constructing registers the controller's informers with the shared factories.
		c, err := construct(factory)
		if err != nil {
			return fmt.Errorf("constructing controller %s: %w", name, err)
		}
		loops[name] = c
	}

	g, gctx := errgroup.WithContext(ctx)
	for name, c := range loops {
		log.Info("starting controller", "name", name)
		g.Go(func() error {
			err := c.Run(o.workers, gctx)
			if err != nil && gctx.Err() == nil {
				return fmt.Errorf("controller %s: %w", name, err)
			}
			return nil
		})
	}
	base.SharedInformerFactory.Start(gctx.Done())
	base.KubeSharedInformerFactory.Start(gctx.Done())
	base.HTTP01ResourceMetadataInformersFactory.Start(gctx.Done())
	err = g.Wait()
	base.HTTP01ResourceMetadataInformersFactory.Shutdown()
	base.KubeSharedInformerFactory.Shutdown()
	base.SharedInformerFactory.Shutdown()
	log.Info("controllers stopped")
	return err
}

// waitForCRDs polls discovery until cert-manager.io/v1 serves every kind the controllers watch.
func waitForCRDs(ctx context.Context, cfg *rest.Config, timeout time.Duration) error {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return err
	}
	want := []string{"certificates", "certificaterequests", "issuers", "clusterissuers"}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	logged := false
	for {
		list, err := dc.ServerResourcesForGroupVersion("cert-manager.io/v1")
		if err == nil {
			found := 0
			for _, r := range list.APIResources {
				if slices.Contains(want, r.Name) {
					found++
				}
			}
			if found == len(want) {
				return nil
			}
		}
		if !logged {
			logf.Log.Info("waiting for the cert-manager.io/v1 CRDs to be served", "resources", want)
			logged = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cert-manager.io/v1 %v not served after %s (install the CRDs from hack/cert-manager.sh --print-crds): %w",
				want, timeout, context.Cause(ctx))
		case <-time.After(500 * time.Millisecond):
		}
	}
}
