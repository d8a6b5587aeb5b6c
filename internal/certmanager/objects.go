package certmanager

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// cert-manager's kinds, for unstructured objects.
var (
	IssuerGVK             = schema.GroupVersionKind{Group: "cert-manager.io", Version: "v1", Kind: "Issuer"}
	ClusterIssuerGVK      = schema.GroupVersionKind{Group: "cert-manager.io", Version: "v1", Kind: "ClusterIssuer"}
	CertificateGVK        = schema.GroupVersionKind{Group: "cert-manager.io", Version: "v1", Kind: "Certificate"}
	CertificateRequestGVK = schema.GroupVersionKind{Group: "cert-manager.io", Version: "v1", Kind: "CertificateRequest"}
)

// Annotations read by cainjector.
const (
	// InjectCAFromAnnotation names a Certificate, as "<namespace>/<name>", whose Secret's ca.crt
	// cainjector copies into the annotated object's caBundle fields.
	InjectCAFromAnnotation = "cert-manager.io/inject-ca-from"
	// InjectCAFromSecretAnnotation names a Secret, as "<namespace>/<name>", likewise.
	InjectCAFromSecretAnnotation = "cert-manager.io/inject-ca-from-secret"
)

// Object returns an unstructured object of kind gvk with the given spec. namespace is ignored
// for cluster-scoped kinds by leaving it empty.
func Object(gvk schema.GroupVersionKind, namespace, name string, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	u.SetGroupVersionKind(gvk)
	u.SetNamespace(namespace)
	u.SetName(name)
	return u
}

// fieldManager owns what this package applies.
const fieldManager = "metaparticle-certmanager-test"

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallCRDs server-side applies every CustomResourceDefinition in the *.yaml files of dir and
// waits until each is Established. It is idempotent.
func InstallCRDs(ctx context.Context, cfg *rest.Config, dir string) error {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return err
	}
	sort.Strings(files)
	if len(files) == 0 {
		return fmt.Errorf("no CRD YAML files in %s", dir)
	}
	var names []string
	served := map[string][]string{} // group/version -> plural resource names
	for _, f := range files {
		crds, err := readCRDs(f)
		if err != nil {
			return err
		}
		for _, crd := range crds {
			_, err := dyn.Resource(crdGVR).Apply(ctx, crd.GetName(), crd, metav1.ApplyOptions{FieldManager: fieldManager, Force: true})
			if err != nil {
				return fmt.Errorf("applying CRD %s from %s: %w", crd.GetName(), f, err)
			}
			names = append(names, crd.GetName())
			servedResources(crd, served)
		}
	}
	for _, name := range names {
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			crd, err := dyn.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			return conditionTrue(crd, "Established"), nil
		})
		if err != nil {
			return fmt.Errorf("waiting for CRD %s to be established: %w", name, err)
		}
	}
	// Established is not the end: discovery lags it, and a client's REST mapper that asks in
	// between gets "no matches for kind". Wait until discovery serves every installed resource.
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return err
	}
	for gv, plurals := range served {
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			list, err := disc.ServerResourcesForGroupVersion(gv)
			if apierrors.IsNotFound(err) {
				return false, nil
			}
			if err != nil {
				return false, err
			}
			have := map[string]bool{}
			for _, r := range list.APIResources {
				have[r.Name] = true
			}
			for _, p := range plurals {
				if !have[p] {
					return false, nil
				}
			}
			return true, nil
		})
		if err != nil {
			return fmt.Errorf("waiting for discovery to serve %s %v: %w", gv, plurals, err)
		}
	}
	return nil
}

// servedResources adds crd's plural resource name under each group/version it serves.
func servedResources(crd *unstructured.Unstructured, into map[string][]string) {
	group, _, _ := unstructured.NestedString(crd.Object, "spec", "group")
	plural, _, _ := unstructured.NestedString(crd.Object, "spec", "names", "plural")
	versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	for _, v := range versions {
		m, ok := v.(map[string]any)
		if !ok || m["served"] != true {
			continue
		}
		name, _ := m["name"].(string)
		gv := group + "/" + name
		into[gv] = append(into[gv], plural)
	}
}

func readCRDs(path string) ([]*unstructured.Unstructured, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	var out []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("decoding %s: %w", path, err)
		}
		if len(u.Object) == 0 {
			continue
		}
		if u.GetKind() != "CustomResourceDefinition" {
			return nil, fmt.Errorf("%s: unexpected %s %q", path, u.GetKind(), u.GetName())
		}
		out = append(out, u)
	}
}

// conditionTrue reports whether u's status has a condition of the given type with status True,
// observed at u's current generation when the condition records one.
func conditionTrue(u *unstructured.Unstructured, typ string) bool {
	c := condition(u, typ)
	if c == nil || c["status"] != "True" {
		return false
	}
	if g, ok := c["observedGeneration"].(int64); ok && g != u.GetGeneration() {
		return false
	}
	return true
}

func condition(u *unstructured.Unstructured, typ string) map[string]any {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == typ {
			return m
		}
	}
	return nil
}

// WaitReady waits until the cert-manager object (Issuer, ClusterIssuer, Certificate or
// CertificateRequest) named namespace/name has the condition Ready=True for its current
// generation, and returns it. It fails at once if the controllers process has exited, and when
// ctx ends it reports the object's last Ready condition.
func (c *Controllers) WaitReady(ctx context.Context, cl client.Client, gvk schema.GroupVersionKind, namespace, name string) (*unstructured.Unstructured, error) {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(gvk)
	key := client.ObjectKey{Namespace: namespace, Name: name}
	var last error
	for {
		last = cl.Get(ctx, key, u)
		if last == nil && conditionTrue(u, "Ready") {
			return u, nil
		}
		select {
		case <-c.Exited():
			return nil, fmt.Errorf("%s %s: %w (%v); see %s", gvk.Kind, key, errExited, c.waitErr, c.LogPath)
		case <-ctx.Done():
			if last != nil {
				return nil, fmt.Errorf("%s %s not Ready: %w (last get: %v)", gvk.Kind, key, ctx.Err(), last)
			}
			return nil, fmt.Errorf("%s %s not Ready: %w; Ready condition: %v", gvk.Kind, key, ctx.Err(), condition(u, "Ready"))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TriggerRenewal asks cert-manager to re-issue the Certificate namespace/name now, as
// `cmctl renew` does: it sets the Certificate's Issuing condition to True with reason
// ManuallyTriggered. The issued Secret changes once the renewal completes (with cert-manager's
// default rotationPolicy Always, so does the private key).
func TriggerRenewal(ctx context.Context, cl client.Client, namespace, name string) error {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(CertificateGVK)
	if err := cl.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, u); err != nil {
		return err
	}
	if c := condition(u, "Issuing"); c != nil && c["status"] == "True" {
		return fmt.Errorf("certificate %s/%s is already being issued", namespace, name)
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	conds = append(conds, map[string]any{
		"type":               "Issuing",
		"status":             "True",
		"reason":             "ManuallyTriggered",
		"message":            "Certificate re-issuance manually triggered",
		"lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
		"observedGeneration": u.GetGeneration(),
	})
	if err := unstructured.SetNestedSlice(u.Object, conds, "status", "conditions"); err != nil {
		return err
	}
	if err := cl.Status().Update(ctx, u); err != nil {
		if apierrors.IsConflict(err) {
			return fmt.Errorf("certificate %s/%s changed meanwhile, retry: %w", namespace, name, err)
		}
		return err
	}
	return nil
}
