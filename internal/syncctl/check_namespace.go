package syncctl

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/internal/leaseaccess"
)

// The namespace's checks of syncctl check (check.go): may its service accounts use Leases, and
// which of its Pods run a side-car other than the one the injector now injects.

const sectionSidecars = "side-cars"

// maxOwnersShown bounds the owners listed under the side-car warning.
const maxOwnersShown = 10

// namespace runs the namespace's checks into k.report. It returns an error when the API server
// cannot be asked at all or ctx ended.
func (k *checker) namespace(ctx context.Context) error {
	section, listNS := "namespace "+k.ns, k.ns
	if k.opts.allNamespaces {
		section, listNS = "all namespaces", metav1.NamespaceAll
	}
	cctx, cancel := k.cli.callContext(ctx)
	defer cancel()
	l, err := k.cs.CoreV1().Pods(listNS).List(cctx, metav1.ListOptions{LabelSelector: labels.Set{contract.LabelInjected: "true"}.String()})
	if err != nil {
		return k.notChecked(section, "the Pods that run a side-car", "list on pods", err)
	}
	var pods []corev1.Pod
	for _, p := range l.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			pods = append(pods, p)
		}
	}
	if err := k.leaseRBAC(ctx, section, pods); err != nil {
		return err
	}
	k.sidecarVersions(pods)
	return nil
}

// serviceAccount is a namespace and service account name, with the side-car Pods that use it.
type serviceAccount struct {
	namespace, name string
	pods            int
}

// leaseRBAC checks that each service account of pods, and those of --service-account (or
// "default" when no Pod runs a side-car), may use Leases in its namespace as the side-car does.
func (k *checker) leaseRBAC(ctx context.Context, section string, pods []corev1.Pod) error {
	byKey := map[string]*serviceAccount{}
	add := func(ns, name string, pods int) {
		if name == "" {
			name = "default"
		}
		key := ns + "/" + name
		if sa, ok := byKey[key]; ok {
			sa.pods += pods
			return
		}
		byKey[key] = &serviceAccount{namespace: ns, name: name, pods: pods}
	}
	for _, p := range pods {
		add(p.Namespace, p.Spec.ServiceAccountName, 1)
	}
	for _, name := range k.opts.serviceAccounts {
		add(k.ns, name, 0)
	}
	if len(byKey) == 0 {
		add(k.ns, "default", 0)
	}
	keys := make([]string, 0, len(byKey))
	for key := range byKey {
		keys = append(keys, key)
	}
	sort.Strings(keys)

	role := k.sidecarClusterRole(ctx)
	for _, key := range keys {
		sa := byKey[key]
		cctx, cancel := k.cli.callContext(ctx) // one bound per account: its reviews are sent in turn
		missing, err := leaseaccess.MissingVerbs(cctx, k.cs.AuthorizationV1().SubjectAccessReviews(), sa.namespace, sa.name)
		cancel()
		if err != nil {
			return k.notChecked(section, "whether the service accounts may use Leases", "create on subjectaccessreviews", err)
		}
		who := "service account " + key
		if sa.pods > 0 {
			who += fmt.Sprintf(" (%d side-car %s)", sa.pods, plural(sa.pods, "Pod", "Pods"))
		}
		fix := leaseaccess.RoleBindingCommand(sa.namespace, sa.name, role)
		switch {
		case len(missing) == 0:
			k.report.add(section, CheckPassed, fmt.Sprintf("%s may %s leases", who, strings.Join(contract.SidecarLeaseVerbs, ", ")), "")
		case leaseaccess.OnlyIdleVerbMissing(missing):
			k.report.add(section, CheckWarning, who+" may not delete leases: idle Leases accumulate in the namespace (locks work)", fix)
		default:
			k.report.add(section, CheckFailed, fmt.Sprintf("%s may not %s leases: side-cars that run as it cannot take locks", who, strings.Join(missing, ", ")), fix)
		}
	}
	return nil
}

// sidecarClusterRole is the name of the chart's side-car ClusterRole (labelled component
// sidecar), for the RoleBinding to suggest; contract.SidecarClusterRole when it cannot be found.
func (k *checker) sidecarClusterRole(ctx context.Context) string {
	cctx, cancel := k.cli.callContext(ctx)
	defer cancel()
	sel := labels.Set{"app.kubernetes.io/name": "metaparticle-sync", "app.kubernetes.io/component": "sidecar"}.String()
	l, err := k.cs.RbacV1().ClusterRoles().List(cctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil || len(l.Items) != 1 {
		return contract.SidecarClusterRole
	}
	return l.Items[0].Name
}

// sidecarVersions warns of the Pods whose side-car is not what the injector now injects (its
// release and image, learnt by the injector's checks), with their owners to roll.
func (k *checker) sidecarVersions(pods []corev1.Pod) {
	where := "namespace " + k.ns
	if k.opts.allNamespaces {
		where = "the cluster"
	}
	if len(pods) == 0 {
		k.report.add(sectionSidecars, CheckPassed, "no Pod of "+where+" runs a side-car", "")
		return
	}
	if k.injectorVersion == "" && k.sidecarImage == "" {
		k.report.add(sectionSidecars, CheckWarning, fmt.Sprintf("not checked: whether the %d side-car Pods of %s run the injector's side-car", len(pods), where),
			"what the injector injects is unknown: its dry run gave no side-car and no injector Deployment was found")
		return
	}
	current := fmt.Sprintf("release %s, image %s", dash(k.injectorVersion), dash(k.sidecarImage))
	owners := map[string][]string{} // owner → "release X, image Y" of its Pods
	var order []string
	stale := 0
	for _, p := range pods {
		v, img := p.Annotations[contract.AnnotationInjectorVersion], p.Annotations[contract.AnnotationInjectedImage]
		if (k.injectorVersion == "" || v == k.injectorVersion) && (k.sidecarImage == "" || img == k.sidecarImage) {
			continue
		}
		stale++
		o := owner(p)
		if owners[o] == nil {
			order = append(order, o)
		}
		if d := fmt.Sprintf("release %s, image %s", dash(v), dash(img)); !slices.Contains(owners[o], d) {
			owners[o] = append(owners[o], d)
		}
	}
	if stale == 0 {
		k.report.add(sectionSidecars, CheckPassed, fmt.Sprintf("the %d side-car %s of %s run the injector's side-car (%s)", len(pods), plural(len(pods), "Pod", "Pods"), where, current), "")
		return
	}
	sort.Strings(order)
	var hint []string
	for i, o := range order {
		if i == maxOwnersShown {
			hint = append(hint, fmt.Sprintf("and %d more", len(order)-maxOwnersShown))
			break
		}
		hint = append(hint, fmt.Sprintf("%s: %s", o, strings.Join(owners[o], "; ")))
	}
	hint = append(hint, "new Pods get the new side-car: roll each owner (kubectl -n NAMESPACE rollout restart deployment/NAME)")
	k.report.add(sectionSidecars, CheckWarning,
		fmt.Sprintf("%d of %d side-car Pods of %s run a side-car other than the injector's (%s)", stale, len(pods), where, current),
		strings.Join(hint, "\n"))
}

// owner names what a user rolls to replace p: "NAMESPACE deployment/NAME" for a ReplicaSet's Pod
// (the Deployment is the ReplicaSet's name without its pod-template-hash), the controller's
// kind and name otherwise, the Pod itself without a controller.
func owner(p corev1.Pod) string {
	ref := metav1.GetControllerOf(&p)
	if ref == nil {
		return p.Namespace + " pod/" + p.Name
	}
	kind, name := strings.ToLower(ref.Kind), ref.Name
	if ref.Kind == "ReplicaSet" {
		if hash := p.Labels[appsv1.DefaultDeploymentUniqueLabelKey]; hash != "" && strings.HasSuffix(name, "-"+hash) {
			kind, name = "deployment", strings.TrimSuffix(name, "-"+hash)
		}
	}
	return p.Namespace + " " + kind + "/" + name
}
