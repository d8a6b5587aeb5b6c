package webhook_test

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/metaparticle-io/sync/webhook"
)

// podOpt changes a Pod fixture.
type podOpt func(*corev1.Pod)

// newPod builds a Pod named "p" in namespace "ns" with one container "app", then applies opts.
func newPod(opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns"},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "app", Image: "example.test/app:1"}},
		},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func annotated(kv ...string) podOpt {
	return func(p *corev1.Pod) {
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		for i := 0; i+1 < len(kv); i += 2 {
			p.Annotations[kv[i]] = kv[i+1]
		}
	}
}

func optedIn() podOpt { return annotated(webhook.AnnotationInject, "true") }

func withContainer(name string, env ...corev1.EnvVar) podOpt {
	return func(p *corev1.Pod) {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: name, Image: "example.test/" + name + ":1", Env: env})
	}
}

func withInitContainer(name string) podOpt {
	return func(p *corev1.Pod) {
		p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: name, Image: "example.test/" + name + ":1"})
	}
}

func withHostNetwork() podOpt { return func(p *corev1.Pod) { p.Spec.HostNetwork = true } }

func withServiceAccount(name string) podOpt {
	return func(p *corev1.Pod) { p.Spec.ServiceAccountName = name }
}
