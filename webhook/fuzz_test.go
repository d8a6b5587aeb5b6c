package webhook_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/metaparticle-io/sync/internal/testenv"
	"github.com/metaparticle-io/sync/webhook"
)

// fuzzKeys are the annotations the fuzzer sets, in the order of FuzzInject's string arguments.
var fuzzKeys = []string{
	webhook.AnnotationInject, webhook.AnnotationMode, webhook.AnnotationPort, webhook.AnnotationImage,
	webhook.AnnotationCPURequest, webhook.AnnotationMemoryLimit, webhook.AnnotationLeaseDuration,
	webhook.AnnotationRenewDeadline, webhook.AnnotationLogLevel,
}

// fuzzPod builds a Pod from fuzz inputs; an empty value leaves its annotation out.
func fuzzPod(values []string, hostNetwork bool, extraContainers uint8) *corev1.Pod {
	pod := newPod()
	for i, v := range values {
		if v != "" {
			annotated(fuzzKeys[i], v)(pod)
		}
	}
	pod.Spec.HostNetwork = hostNetwork
	for i := 0; i < int(extraContainers%4); i++ {
		withContainer(fmt.Sprintf("c%d", i))(pod)
	}
	return pod
}

// checkInjectInvariants is what must hold for every input: a denial leaves the Pod unchanged and
// returns the zero Result; a skip leaves it unchanged; an injection adds exactly one side-car and
// the status annotation; a second run changes nothing and says the Pod was injected already.
func checkInjectInvariants(t *testing.T, pod *corev1.Pod) (injected bool) {
	before := pod.DeepCopy()
	after := pod.DeepCopy()
	res, err := webhook.Inject(after, webhook.DefaultConfig(testImage))
	if err != nil {
		if !equality.Semantic.DeepEqual(before, after) {
			t.Fatalf("got Pod changed with error %v; want it unchanged", err)
		}
		if res.Action != "" || res.Warnings != nil {
			t.Fatalf("got result %+v with error %v; want the zero Result", res, err)
		}
		return false
	}
	switch res.Action {
	case webhook.ActionInjected:
	case webhook.ActionNotOptedIn, webhook.ActionAlreadyInjected:
		if !equality.Semantic.DeepEqual(before, after) {
			t.Fatalf("got Pod changed with action %q; want it unchanged", res.Action)
		}
		return false
	default:
		t.Fatalf("got action %q without error; want %q, %q or %q", res.Action,
			webhook.ActionInjected, webhook.ActionNotOptedIn, webhook.ActionAlreadyInjected)
	}
	if got := after.Annotations[webhook.AnnotationStatus]; got != webhook.StatusInjected {
		t.Fatalf("got status annotation %q after an injection; want %q", got, webhook.StatusInjected)
	}
	if n := countSidecars(after); n != 1 {
		t.Fatalf("got %d side-cars; want 1", n)
	}
	again := after.DeepCopy()
	res, err = webhook.Inject(again, webhook.DefaultConfig(testImage))
	if err != nil || res.Action != webhook.ActionAlreadyInjected || !equality.Semantic.DeepEqual(after, again) {
		t.Fatalf("got error %v, action %q, changed=%v on re-injection; want no error, %q, unchanged",
			err, res.Action, !equality.Semantic.DeepEqual(after, again), webhook.ActionAlreadyInjected)
	}
	return true
}

func FuzzInject(f *testing.F) {
	f.Add("true", "", "", "", "", "", "", "", "", false, uint8(0))
	f.Add("true", "classic", "14000", "example.test/x:1", "50m", "128Mi", "20s", "12s", "debug", false, uint8(2))
	f.Add("true", "native", "1", " ", "-1", "lots", "soon", "1h", "loud", true, uint8(1))
	f.Add("yes", "", "", "", "", "", "", "", "", false, uint8(0))
	f.Add("true", "", "65534", "", "1e3", "1Ei", "1ns", "999h", "", true, uint8(3))
	f.Add("true", "", "", "", "", "", "1500ms", "1s", "", false, uint8(0))
	f.Fuzz(func(t *testing.T, inject, mode, port, image, cpu, mem, lease, deadline, level string, hostNetwork bool, extra uint8) {
		checkInjectInvariants(t, fuzzPod([]string{inject, mode, port, image, cpu, mem, lease, deadline, level}, hostNetwork, extra))
	})
}

// fuzzValuePool holds valid, edge and invalid values for each fuzzed annotation, mostly absent or
// valid so that a useful share of the sample is injected.
var fuzzValuePool = [][]string{
	{"true", "true", "true", "true", "true", "false", "yes"},
	{"", "", "native", "classic", "other"},
	{"", "", "", "1024", "65534", "14000", "0"},
	{"", "", "", "example.test/other:v2", "registry.example:5000/a/b@sha256:" + fmt.Sprintf("%064d", 0), "a b"},
	{"", "", "", "1m", "100m", "1", "1e2", "-5m"},
	{"", "", "", "32Mi", "64Mi", "1Gi", "1.5Gi", "0"},
	{"", "", "", "16s", "60s", "1h", "15.5s"},
	{"", "", "", "11s", "14s", "5s"},
	{"", "", "debug", "info", "error"},
}

// TestIntegrationInjectedSampleValidates dry-run creates a deterministic sample of fuzz-shaped Pods:
// every Pod Inject accepts must pass the real API server's validation.
func TestIntegrationInjectedSampleValidates(t *testing.T) {
	testenv.Require(t, env)
	startInjector(t)
	ns := env.Namespace(t)
	rng := rand.New(rand.NewPCG(1, 2))
	injected := 0
	for i := 0; i < 400; i++ {
		values := make([]string, len(fuzzValuePool))
		for k, pool := range fuzzValuePool {
			values[k] = pool[rng.IntN(len(pool))]
		}
		pod := fuzzPod(values, rng.IntN(8) == 0, uint8(rng.IntN(4)))
		if !checkInjectInvariants(t, pod) {
			continue
		}
		if _, err := webhook.Inject(pod, webhook.DefaultConfig(testImage)); err != nil {
			t.Fatal(err)
		}
		pod.Namespace = ns
		pod.Name = fmt.Sprintf("sample-%d", i)
		// Injected already: the webhook sees the status annotation and leaves it alone, so the
		// API server validates exactly what Inject produced.
		if err := env.Client.Create(context.Background(), pod, client.DryRunAll); err != nil {
			t.Errorf("got %v for injected Pod with annotations %v; want it valid", err, pod.Annotations)
		}
		injected++
	}
	t.Logf("dry-run created %d injected Pods out of 400 samples", injected)
	if injected < 20 {
		t.Fatalf("got %d injected Pods in the sample; want at least 20 to make the check meaningful", injected)
	}
}
