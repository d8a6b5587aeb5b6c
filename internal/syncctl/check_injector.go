package syncctl

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path"
	"slices"
	"sort"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/ptr"

	"github.com/metaparticle-io/sync/internal/contract"
)

// The injector's checks of syncctl check (check.go): its webhooks, their caBundles, its serving
// certificate, its Deployment, and a dry-run Pod.

const sectionInjector = "injector"

// annotationHook is the webhook that injects annotated Pods; the other one
// (inject-namespace…) injects the Pods of opted-in namespaces.
const annotationHook = "inject" + contract.WebhookNameSuffix

// dialTimeout bounds the TLS dial of a webhook URL from this machine.
const dialTimeout = 5 * time.Second

// hook is one webhook of the injector and the configuration that holds it.
type hook struct {
	config string
	admissionregistrationv1.MutatingWebhook
}

// target is where the API server calls one or more of the injector's webhooks, with which CA.
type target struct {
	service  *admissionregistrationv1.ServiceReference // or
	url      string
	caBundle []byte
	hooks    []string
}

func (t *target) String() string {
	if t.service != nil {
		return "Service " + t.service.Namespace + "/" + t.service.Name
	}
	return t.url
}

// injector runs the injector's checks into k.report. It returns an error when the API server
// cannot be asked at all (unreachable, unauthorized) or ctx ended.
func (k *checker) injector(ctx context.Context) error {
	hooks, listed, err := k.webhooks(ctx)
	if err != nil {
		return err
	}
	if !listed {
		// The configuration could not be read: the dry run still tests the whole path.
		return k.dryRun(ctx, nil)
	}
	if hooks == nil {
		return nil // not installed, which webhooks reported
	}
	for _, t := range targets(hooks) {
		roots, ok := k.caBundle(t)
		var err error
		if t.service != nil {
			err = k.servingService(ctx, t, roots, ok)
		} else {
			err = k.servingURL(ctx, t, roots, ok)
		}
		if err != nil {
			return err
		}
	}
	return k.dryRun(ctx, hooks)
}

// notChecked records a check that could not be made: a warning when k's permissions do not
// allow it, a failure for any other error (the API server did not answer, a server error), so
// that the other checks still run and the report is printed. It returns nil, or err when the
// command was interrupted (Ctrl-C).
func (k *checker) notChecked(section, what, needs string, err error) error {
	switch {
	case errors.Is(err, context.Canceled):
		return err
	case apierrors.IsForbidden(err):
		k.report.add(section, CheckWarning, "not checked: "+what, fmt.Sprintf("%s (it needs %s)", apiMessage(err), needs))
	default:
		k.report.add(section, CheckFailed, "could not check "+what+": "+oneLine(k.cli.explainNeeding(err, needs).Error()), "")
	}
	return nil
}

// webhooks finds the injector's webhooks in every MutatingWebhookConfiguration. listed is false
// when they could not be listed; hooks is nil when there are none (which it reports).
func (k *checker) webhooks(ctx context.Context) (hooks []hook, listed bool, err error) {
	cctx, cancel := k.cli.callContext(ctx)
	defer cancel()
	l, err := k.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().List(cctx, metav1.ListOptions{})
	if err != nil {
		return nil, false, k.notChecked(sectionInjector, "the webhook configuration", "list on mutatingwebhookconfigurations", err)
	}
	byConfig := map[string][]string{}
	var configs []string
	for _, c := range l.Items {
		for _, w := range c.Webhooks {
			if strings.HasSuffix(w.Name, contract.WebhookNameSuffix) {
				hooks = append(hooks, hook{config: c.Name, MutatingWebhook: w})
				if byConfig[c.Name] == nil {
					configs = append(configs, c.Name)
				}
				byConfig[c.Name] = append(byConfig[c.Name], w.Name)
			}
		}
	}
	if len(hooks) == 0 {
		k.report.add(sectionInjector, CheckFailed,
			fmt.Sprintf("no MutatingWebhookConfiguration has a webhook named *%s: the injector is not installed", contract.WebhookNameSuffix),
			"install it as docs/install.md says (helm install metaparticle-sync oci://<registry>/charts/metaparticle-sync)")
		return nil, true, nil
	}
	for _, name := range configs {
		names := byConfig[name]
		msg := fmt.Sprintf("webhook configuration %s has the webhooks %s", name, strings.Join(names, ", "))
		if !slices.Contains(names, annotationHook) {
			k.report.add(sectionInjector, CheckWarning, msg, "it has no "+annotationHook+": Pods annotated "+contract.AnnotationInject+" are not injected; upgrade the release")
			continue
		}
		k.report.add(sectionInjector, CheckPassed, msg, "")
	}
	if len(configs) > 1 {
		k.report.add(sectionInjector, CheckWarning, fmt.Sprintf("%d webhook configurations inject the side-car: %s", len(configs), strings.Join(configs, ", ")),
			"two releases of the injector are installed; uninstall one (the first to answer injects, the second sees the Pod injected)")
	}
	return hooks, true, nil
}

// targets groups hooks by where the API server calls them and with which caBundle, in the order
// of their first hook.
func targets(hooks []hook) []*target {
	var out []*target
	byKey := map[string]*target{}
	for _, h := range hooks {
		cc := h.ClientConfig
		key := string(cc.CABundle) + "\x00"
		t := &target{caBundle: cc.CABundle}
		if cc.Service != nil {
			key += "service\x00" + cc.Service.Namespace + "/" + cc.Service.Name
			t.service = cc.Service
		} else if cc.URL != nil {
			u := *cc.URL
			if parsed, err := url.Parse(u); err == nil {
				key += "url\x00" + parsed.Host
			}
			t.url = u
		}
		if have, ok := byKey[key]; ok {
			have.hooks = append(have.hooks, h.Name)
			continue
		}
		t.hooks = []string{h.Name}
		byKey[key] = t
		out = append(out, t)
	}
	return out
}

// caBundle checks t's caBundle and returns its certificates; ok is false when the serving
// certificate cannot be checked against it (empty for a Service, or invalid).
func (k *checker) caBundle(t *target) (roots []*x509.Certificate, ok bool) {
	what := "caBundle of " + strings.Join(t.hooks, ", ")
	if len(bytes.TrimSpace(t.caBundle)) == 0 {
		if t.service != nil {
			k.report.add(sectionInjector, CheckFailed, what+" is empty: the API server cannot verify the injector",
				"with cert-manager, its cainjector fills it from the annotation cert-manager.io/inject-ca-from: is cert-manager running (kubectl -n cert-manager get pods)?\n"+
					"without cert-manager, helm upgrade the release to write it again")
			return nil, false
		}
		k.report.add(sectionInjector, CheckWarning, what+" is empty: the API server verifies "+t.url+" with its own system roots", "")
		return nil, true
	}
	certs, err := parseCertificates(t.caBundle)
	if err != nil {
		k.report.add(sectionInjector, CheckFailed, what+" is not a list of PEM certificates: "+err.Error(), "")
		return nil, false
	}
	// A bundle may hold an old CA next to a new one while a CA is rotated: it fails only when
	// no certificate of it is valid now, and the serving certificate is checked against the valid ones.
	now := k.cli.clock.Now()
	var valid []*x509.Certificate
	var invalid []string
	for _, c := range certs {
		switch {
		case now.After(c.NotAfter):
			invalid = append(invalid, fmt.Sprintf("CA certificate %q expired on %s", c.Subject.CommonName, day(c.NotAfter)))
		case now.Before(c.NotBefore):
			invalid = append(invalid, fmt.Sprintf("CA certificate %q is not valid before %s (is a clock wrong?)", c.Subject.CommonName, c.NotBefore.UTC().Format(time.RFC3339)))
		default:
			valid = append(valid, c)
		}
	}
	renew := "renew the CA (with cert-manager, delete the CA's Secret; without it, helm upgrade the release)"
	switch {
	case len(valid) == 0:
		k.report.add(sectionInjector, CheckFailed, what+": "+strings.Join(invalid, "; "), renew)
		return nil, false
	case len(invalid) > 0:
		k.report.add(sectionInjector, CheckWarning, fmt.Sprintf("%s: %d valid CA %s (%s), and %s", what, len(valid), plural(len(valid), "certificate", "certificates"),
			certNames(valid), strings.Join(invalid, "; ")), "remove the invalid ones once no serving certificate needs them")
	default:
		k.report.add(sectionInjector, CheckPassed, fmt.Sprintf("%s: %d CA %s (%s), valid until %s", what, len(valid), plural(len(valid), "certificate", "certificates"),
			certNames(valid), day(earliestExpiry(valid))), "")
	}
	return valid, true
}

// parseCertificates parses PEM data holding only CERTIFICATE blocks, at least one.
func parseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := data; len(bytes.TrimSpace(rest)) > 0; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("data after the last PEM block is not PEM")
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("a PEM block of type %q, not CERTIFICATE", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificate")
	}
	return certs, nil
}

func certNames(certs []*x509.Certificate) string {
	names := make([]string, len(certs))
	for i, c := range certs {
		names[i] = "CN=" + c.Subject.CommonName
	}
	return strings.Join(names, ", ")
}

func earliestExpiry(certs []*x509.Certificate) time.Time {
	t := certs[0].NotAfter
	for _, c := range certs[1:] {
		if c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t
}

func day(t time.Time) string { return t.UTC().Format("2006-01-02") }

// verifyServing verifies chain (leaf first) for a TLS server named host at now, against roots, as
// the API server verifies the injector.
func verifyServing(chain, roots []*x509.Certificate, host string, now time.Time) error {
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range roots {
		pool.AddCert(c)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{
		DNSName: host, Roots: pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return err
}

// servingService checks the Deployment behind t's Service and the serving certificate in its
// Secret (when caOK) against roots, for the name the API server calls: <service>.<namespace>.svc.
func (k *checker) servingService(ctx context.Context, t *target, roots []*x509.Certificate, caOK bool) error {
	cctx, cancel := k.cli.callContext(ctx)
	defer cancel()
	ns, name := t.service.Namespace, t.service.Name
	svc, err := k.cs.CoreV1().Services(ns).Get(cctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		k.report.add(sectionInjector, CheckFailed, fmt.Sprintf("Service %s/%s of %s not found: the API server cannot call the injector", ns, name, strings.Join(t.hooks, ", ")),
			"helm upgrade (or reinstall) the release")
		return nil
	case err != nil:
		return k.notChecked(sectionInjector, "the injector's Service "+ns+"/"+name, "get on services", err)
	}
	deps, err := k.cs.AppsV1().Deployments(ns).List(cctx, metav1.ListOptions{})
	if err != nil {
		return k.notChecked(sectionInjector, "the injector's Deployment in "+ns, "list on deployments", err)
	}
	var behind []appsv1.Deployment
	if len(svc.Spec.Selector) > 0 {
		sel := labels.SelectorFromSet(svc.Spec.Selector)
		for _, d := range deps.Items {
			if sel.Matches(labels.Set(d.Spec.Template.Labels)) {
				behind = append(behind, d)
			}
		}
	}
	if len(behind) == 0 {
		k.report.add(sectionInjector, CheckFailed, fmt.Sprintf("no Deployment of %s runs the Pods of Service %s/%s", ns, ns, name),
			"helm upgrade (or reinstall) the release")
		return nil
	}
	for _, d := range behind {
		k.deploymentReady(d)
	}
	if !caOK {
		return nil
	}
	host := name + "." + ns + ".svc"
	for _, secret := range servingSecrets(behind[0]) {
		s, err := k.cs.CoreV1().Secrets(ns).Get(cctx, secret, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) {
				k.report.add(sectionInjector, CheckFailed, fmt.Sprintf("Secret %s/%s of the injector's serving certificate not found", ns, secret),
					"with cert-manager: kubectl -n "+ns+" describe certificate (is the Certificate ready?)")
				return nil
			}
			return k.notChecked(sectionInjector, "the serving certificate in Secret "+ns+"/"+secret, "get on secrets in "+ns, err)
		}
		crt, ok := s.Data[corev1.TLSCertKey]
		if !ok {
			continue
		}
		what := fmt.Sprintf("serving certificate (Secret %s/%s)", ns, s.Name)
		chain, err := parseCertificates(crt)
		if err != nil {
			k.report.add(sectionInjector, CheckFailed, what+" is not PEM certificates: "+err.Error(), "")
			return nil
		}
		if err := verifyServing(chain, roots, host, k.cli.clock.Now()); err != nil {
			k.report.add(sectionInjector, CheckFailed, fmt.Sprintf("%s is not valid for the API server's call to %s: %v", what, host, err),
				"the caBundle and the serving certificate must come from the same CA: with cert-manager, check the Certificate (kubectl -n "+ns+" describe certificate) and its cainjector; without it, helm upgrade the release")
			return nil
		}
		k.report.add(sectionInjector, CheckPassed, fmt.Sprintf("%s is signed by the caBundle for %s, valid until %s", what, host, day(chain[0].NotAfter)), "")
		return nil
	}
	k.report.add(sectionInjector, CheckWarning, fmt.Sprintf("not checked: the serving certificate (no Secret with %s among the volumes of Deployment %s/%s)", corev1.TLSCertKey, ns, behind[0].Name), "")
	return nil
}

// servingSecrets names the Secrets that may hold d's serving certificate: the one mounted at the
// injector's --cert-dir (the chart's), or else every Secret volume that is not optional.
func servingSecrets(d appsv1.Deployment) []string {
	spec := d.Spec.Template.Spec
	secretOf := map[string]string{}
	var all []string
	for _, v := range spec.Volumes {
		if v.Secret != nil && !ptr.Deref(v.Secret.Optional, false) {
			secretOf[v.Name] = v.Secret.SecretName
			all = append(all, v.Secret.SecretName)
		}
	}
	for _, c := range spec.Containers {
		for _, a := range c.Args {
			dir, ok := strings.CutPrefix(a, "--cert-dir=")
			if !ok {
				continue
			}
			for _, m := range c.VolumeMounts {
				if s, ok := secretOf[m.Name]; ok && path.Clean(m.MountPath) == path.Clean(dir) {
					return []string{s}
				}
			}
		}
	}
	return all
}

// servingURL dials t's URL from this machine and verifies the certificate it serves against
// roots (the system's when roots is empty), for the URL's host, as the API server does. Which
// Deployment, if any, serves a URL is not known: the dry run tests that something does.
func (k *checker) servingURL(ctx context.Context, t *target, roots []*x509.Certificate, caOK bool) error {
	if !caOK {
		return nil
	}
	u, err := url.Parse(t.url)
	if err != nil || u.Hostname() == "" {
		k.report.add(sectionInjector, CheckFailed, fmt.Sprintf("URL %q of %s is not a URL", t.url, strings.Join(t.hooks, ", ")), "")
		return nil
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	cfg := &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	if len(roots) > 0 {
		cfg.RootCAs = x509.NewCertPool()
		for _, c := range roots {
			cfg.RootCAs.AddCert(c)
		}
	}
	dctx, dcancel := context.WithTimeout(ctx, dialTimeout)
	defer dcancel()
	d := &tls.Dialer{Config: cfg}
	conn, err := d.DialContext(dctx, "tcp", net.JoinHostPort(u.Hostname(), port))
	var verr *tls.CertificateVerificationError
	switch {
	case errors.As(err, &verr):
		if len(roots) == 0 {
			k.report.add(sectionInjector, CheckFailed, fmt.Sprintf("the injector at %s serves a certificate that the system roots do not verify (its webhooks have no caBundle): %v", t.url, verr.Err),
				"set a caBundle that verifies it")
			return nil
		}
		k.report.add(sectionInjector, CheckFailed, fmt.Sprintf("the injector at %s serves a certificate that the caBundle does not verify: %v", t.url, verr.Err),
			"the caBundle and the serving certificate must come from the same CA")
		return nil
	case err != nil:
		if errors.Is(ctx.Err(), context.Canceled) {
			return ctx.Err()
		}
		k.report.add(sectionInjector, CheckWarning, fmt.Sprintf("not checked: the certificate of %s (cannot reach it from here: %v)", t.url, err),
			"the dry run below tests the API server's own call")
		return nil
	}
	defer conn.Close()
	leaf := conn.(*tls.Conn).ConnectionState().PeerCertificates[0]
	k.report.add(sectionInjector, CheckPassed, fmt.Sprintf("the injector at %s serves a certificate signed by the caBundle for %s, valid until %s", t.url, u.Hostname(), day(leaf.NotAfter)), "")
	return nil
}

// deploymentReady checks that d, an injector Deployment, has its replicas ready, and learns its
// release.
func (k *checker) deploymentReady(d appsv1.Deployment) {
	want := ptr.Deref(d.Spec.Replicas, 1)
	ready := d.Status.ReadyReplicas
	v := d.Labels["app.kubernetes.io/version"]
	if k.injectorVersion == "" {
		k.injectorVersion = v
	}
	msg := fmt.Sprintf("injector Deployment %s/%s: %d of %d replicas ready, release %s", d.Namespace, d.Name, ready, want, dash(v))
	hint := fmt.Sprintf("kubectl -n %s describe deployment %s; kubectl -n %s logs deployment/%s", d.Namespace, d.Name, d.Namespace, d.Name)
	switch {
	case want == 0:
		k.report.add(sectionInjector, CheckFailed, msg, "it is scaled to zero: opted-in Pods are refused (failurePolicy Fail) or created without the side-car (Ignore)")
	case ready == 0:
		k.report.add(sectionInjector, CheckFailed, msg, hint)
	case ready < want:
		k.report.add(sectionInjector, CheckWarning, msg, hint)
	default:
		k.report.add(sectionInjector, CheckPassed, msg, "")
	}
}

// probeImage is the dry-run Pod's image; a dry run never pulls it.
const probeImage = "registry.k8s.io/pause:3.10"

// probePod is the dry-run Pod: annotated for injection, and compliant with the restricted Pod
// Security level, so that a namespace enforcing it does not refuse the probe itself.
func probePod(ns string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "syncctl-check-",
			Namespace:    ns,
			Annotations:  map[string]string{contract.AnnotationInject: "true"},
		},
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   ptr.To(true),
				RunAsUser:      ptr.To[int64](65532),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name:  "check",
				Image: probeImage,
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr.To(false),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
}

// dryRun asks the API server to create, without storing it, a Pod annotated for injection in
// k.ns: the whole path (the webhook's selection, the API server's TLS call to the injector with
// the caBundle, the injection) works when the Pod comes back with the side-car.
func (k *checker) dryRun(ctx context.Context, hooks []hook) error {
	cctx, cancel := k.cli.callContext(ctx)
	defer cancel()
	what := fmt.Sprintf("a dry-run Pod annotated %s: \"true\" in namespace %s", contract.AnnotationInject, k.ns)
	k.warnings.take()
	got, err := k.cs.CoreV1().Pods(k.ns).Create(cctx, probePod(k.ns), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldManager: "syncctl-check"})
	warnings := k.warnings.take()
	var status apierrors.APIStatus
	switch {
	case err != nil && apierrors.IsForbidden(err) && strings.Contains(apiMessage(err), "cannot create resource"):
		return k.notChecked(sectionInjector, what, "create on pods in "+k.ns, err)
	case apierrors.IsNotFound(err):
		k.report.add(sectionInjector, CheckFailed, what+": namespace "+k.ns+" not found", "")
		return nil
	case errors.As(err, &status):
		hint := ""
		if msg := apiMessage(err); strings.Contains(msg, "failed calling webhook") {
			hint = "the API server cannot call the injector: see the checks above, and docs/install.md's provider notes (a firewall between the control plane and the injector's port)"
		}
		k.report.add(sectionInjector, CheckFailed, what+" was refused: "+oneLine(apiMessage(err)), hint)
		return nil
	case err != nil:
		return k.notChecked(sectionInjector, what, "create on pods in "+k.ns, err)
	}
	if got.Labels[contract.LabelInjected] != "true" {
		k.report.add(sectionInjector, CheckFailed, what+" was created without the side-car", k.whyNotInjected(ctx, hooks))
		return nil
	}
	if v := got.Annotations[contract.AnnotationInjectorVersion]; v != "" {
		k.injectorVersion = v
	}
	k.sidecarImage = got.Annotations[contract.AnnotationInjectedImage]
	msg := fmt.Sprintf("%s gets the side-car %s from injector release %s", what, dash(k.sidecarImage), dash(k.injectorVersion))
	if len(warnings) > 0 {
		k.report.add(sectionInjector, CheckWarning, msg+", with warnings", "the API server warned: "+strings.Join(warnings, "\nthe API server warned: "))
		return nil
	}
	k.report.add(sectionInjector, CheckPassed, msg, "")
	return nil
}

// whyNotInjected explains a dry-run Pod created without the side-car, from what it can read.
func (k *checker) whyNotInjected(ctx context.Context, hooks []hook) string {
	cctx, cancel := k.cli.callContext(ctx)
	defer cancel()
	ns, err := k.cs.CoreV1().Namespaces().Get(cctx, k.ns, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	var selecting []hook
	for _, h := range hooks {
		sel, err := metav1.LabelSelectorAsSelector(h.NamespaceSelector)
		if err == nil && (h.NamespaceSelector == nil || sel.Matches(labels.Set(ns.Labels))) {
			selecting = append(selecting, h)
		}
	}
	if len(selecting) == 0 {
		return fmt.Sprintf("no webhook of the injector selects namespace %s (their namespaceSelectors leave out the injector's own namespace, the control plane's and the chart's webhook.excludeNamespaces)", k.ns)
	}
	var ignore []string
	for _, h := range selecting {
		if h.FailurePolicy != nil && *h.FailurePolicy == admissionregistrationv1.Ignore {
			ignore = append(ignore, h.Name)
		}
	}
	if len(ignore) > 0 {
		sort.Strings(ignore)
		return fmt.Sprintf("the failurePolicy of %s is Ignore: when the API server cannot call the injector, it creates the Pod without the side-car; see the checks above", strings.Join(ignore, ", "))
	}
	return "the injector left it alone: see its logs and the Events of the namespace (kubectl -n " + k.ns + " get events --field-selector reason=SidecarSkipped)"
}
