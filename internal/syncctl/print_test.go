package syncctl

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

// now is the fixed clock of the formatting tests.
var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const session = "5f0c2a7e9b1d4c3fa8e6d0b2c4e6f8a1"

// leaseOpt changes a Lease built by lease.
type leaseOpt func(*coordinationv1.Lease)

// lease builds a Lease as the side-car writes it for the lock or election name, free, with a
// lease duration of 15 s, changed by opts.
func lease(kind wire.Kind, ns, name string, opts ...leaseOpt) *coordinationv1.Lease {
	l := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:   ns,
			Name:        contract.LeaseName(kind, name),
			Labels:      map[string]string{contract.LabelManagedBy: contract.ManagedByValue, contract.LabelKind: string(kind)},
			Annotations: map[string]string{contract.AnnotationName: name},
		},
		Spec: coordinationv1.LeaseSpec{LeaseDurationSeconds: ptr.To(int32(15)), LeaseTransitions: ptr.To(int32(0))},
	}
	for _, o := range opts {
		o(l)
	}
	return l
}

// heldBy makes the Lease held by holder since acquired ago, last renewed renewed ago, with token.
func heldBy(holder, token string, acquired, renewed time.Duration) leaseOpt {
	return func(l *coordinationv1.Lease) {
		l.Spec.HolderIdentity = &holder
		l.Spec.AcquireTime = &metav1.MicroTime{Time: now.Add(-acquired)}
		l.Spec.RenewTime = &metav1.MicroTime{Time: now.Add(-renewed)}
		l.Annotations[contract.AnnotationToken] = token
	}
}

// released makes the Lease free, released ago, with the last grant's token.
func released(token string, ago time.Duration) leaseOpt {
	return func(l *coordinationv1.Lease) {
		l.Spec.HolderIdentity = nil
		l.Spec.AcquireTime = nil
		l.Spec.RenewTime = &metav1.MicroTime{Time: now.Add(-ago)}
		l.Annotations[contract.AnnotationToken] = token
	}
}

func transitions(n int32) leaseOpt {
	return func(l *coordinationv1.Lease) { l.Spec.LeaseTransitions = &n }
}

func items(leases ...*coordinationv1.Lease) []Item {
	var out []Item
	for _, l := range leases {
		out = append(out, ItemFromLease(l))
	}
	sortItems(out)
	return out
}

// fixture: a held lock, a free one, one whose holder stopped renewing 20 s ago, in two
// namespaces.
func fixture() []Item {
	return items(
		lease(wire.KindLock, "shop", "orders/eu", heldBy("web-0/"+session, "48211", 3*time.Minute+10*time.Second, 2*time.Second), transitions(3)),
		lease(wire.KindLock, "shop", "idle", released("977", time.Hour)),
		lease(wire.KindLock, "batch", "nightly", heldBy("cron-7/0123456789abcdef0123456789abcdef", "12", 50*time.Second, 20*time.Second)),
	)
}

func TestSplitHolder(t *testing.T) {
	for _, tc := range []struct{ holder, pod, session string }{
		{"web-0/" + session, "web-0", session},
		{"web-0", "web-0", ""},
		{"web-0/", "web-0", ""},
		{"a/b/c", "a", "b/c"},
		{"", "", ""},
	} {
		pod, s := SplitHolder(tc.holder)
		if pod != tc.pod || s != tc.session {
			t.Errorf("SplitHolder(%q) = %q, %q; want %q, %q", tc.holder, pod, s, tc.pod, tc.session)
		}
	}
}

func TestItemFromLease(t *testing.T) {
	held := ItemFromLease(lease(wire.KindElection, "ns", "scheduler", heldBy("web-1/"+session, "42", time.Minute, time.Second), transitions(2)))
	want := Item{
		Kind: wire.KindElection, Namespace: "ns", Name: "scheduler", Lease: contract.LeaseName(wire.KindElection, "scheduler"),
		Held: true, Holder: "web-1/" + session, Pod: "web-1", Session: session, Token: "42",
		AcquireTime: ptr.To(now.Add(-time.Minute)), RenewTime: ptr.To(now.Add(-time.Second)), ExpireTime: ptr.To(now.Add(14 * time.Second)),
		LeaseDurationSeconds: 15, LeaseTransitions: 2,
	}
	if !equalItems(held, want) {
		t.Errorf("held: got %+v\nwant %+v", held, want)
	}
	if held.Expired(now) || !held.Expired(now.Add(14*time.Second)) {
		t.Errorf("Expired: want false now and true at renewTime + duration")
	}

	free := ItemFromLease(lease(wire.KindLock, "ns", "x", released("7", time.Minute)))
	if free.Held || free.Holder != "" || free.AcquireTime != nil || free.ExpireTime != nil || free.Token != "7" || free.RenewTime == nil {
		t.Errorf("free: got %+v; want not held, no acquire or expire time, last token 7, renew time kept", free)
	}
	// An empty holder identity is free, like a missing one.
	empty := ItemFromLease(lease(wire.KindLock, "ns", "x", func(l *coordinationv1.Lease) { l.Spec.HolderIdentity = ptr.To("") }))
	if empty.Held {
		t.Errorf("empty holder identity: got held")
	}
}

func equalItems(a, b Item) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

func TestFormatDurations(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{-5 * time.Second, "0s"}, // a clock ahead of ours
		{1500 * time.Millisecond, "1s"},
		{59 * time.Second, "59s"},
		{3*time.Minute + 10*time.Second, "3m10s"},
		{2*time.Hour + 5*time.Minute, "125m"},
		{50 * time.Hour, "2d2h"},
	} {
		if got := formatAge(tc.d); got != tc.want {
			t.Errorf("formatAge(%v) = %q; want %q", tc.d, got, tc.want)
		}
	}
	held := ItemFromLease(lease(wire.KindLock, "ns", "x", heldBy("p/s", "1", time.Minute, 5*time.Second)))
	for _, tc := range []struct {
		at   time.Time
		want string
	}{
		{now, "10s"},
		{now.Add(9 * time.Second), "1s"},
		{now.Add(10 * time.Second), "expired 0s ago"},
		{now.Add(40 * time.Second), "expired 30s ago"},
	} {
		if got := formatExpiresIn(held, tc.at); got != tc.want {
			t.Errorf("formatExpiresIn at now+%v = %q; want %q", tc.at.Sub(now), got, tc.want)
		}
	}
	if got := formatExpiresIn(ItemFromLease(lease(wire.KindLock, "ns", "x")), now); got != "-" {
		t.Errorf("formatExpiresIn of a free lock = %q; want -", got)
	}
}

func TestPrintTable(t *testing.T) {
	for _, tc := range []struct {
		name          string
		allNamespaces bool
		format        string
		items         []Item
		want          string
	}{{
		name:          "all namespaces",
		allNamespaces: true,
		items:         fixture(),
		want: `
NAMESPACE   NAME        HOLDER   SESSION    HELD SINCE   TOKEN   EXPIRES IN (EST.)
batch       nightly     cron-7   01234567   50s          12      expired 5s ago
shop        idle        -        -          -            -       -
shop        orders/eu   web-0    5f0c2a7e   3m10s        48211   13s
`,
	}, {
		name:   "one namespace, wide",
		format: formatWide,
		items:  fixture()[1:],
		want: `
NAME        HOLDER   SESSION                            HELD SINCE   TOKEN   EXPIRES IN (EST.)   TRANSITIONS   LEASE
idle        -        -                                  -            -       -                   0             lock-idle-` + hash("idle") + `
orders/eu   web-0    5f0c2a7e9b1d4c3fa8e6d0b2c4e6f8a1   3m10s        48211   13s                 3             lock-orders-eu-` + hash("orders/eu") + `
`,
	}, {
		name:  "names that could upset a terminal are quoted; a missing annotation shows the Lease",
		items: items(lease(wire.KindLock, "ns", "bell\a"), lease(wire.KindLock, "ns", "", func(l *coordinationv1.Lease) { l.Name = "lock-x" })),
		want: `
NAME             HOLDER   SESSION   HELD SINCE   TOKEN   EXPIRES IN (EST.)
(lease lock-x)   -        -         -            -       -
"bell\a"         -        -         -            -       -
`,
	}, {
		name:  "empty",
		items: nil,
		want: `
`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := printList(&b, printOptions{format: tc.format, allNamespaces: tc.allNamespaces}, tc.items, now, false); err != nil {
				t.Fatal(err)
			}
			if got, want := b.String(), strings.TrimPrefix(tc.want, "\n"); got != want {
				t.Errorf("got\n%s\nwant\n%s", got, want)
			}
		})
	}
}

// hash is the hash part of the Lease name of lock name.
func hash(name string) string {
	l := contract.LeaseName(wire.KindLock, name)
	return l[strings.LastIndex(l, "-")+1:]
}

// TestPrintJSONAndYAML: -o json and -o yaml carry the same objects under the same, stable field
// names.
func TestPrintJSONAndYAML(t *testing.T) {
	wantKeys := map[string][]string{
		"orders/eu": {"acquireTime", "expireTime", "held", "holder", "kind", "lease", "leaseDurationSeconds", "leaseTransitions", "name", "namespace", "pod", "renewTime", "session", "token"},
		"idle":      {"held", "kind", "lease", "leaseDurationSeconds", "leaseTransitions", "name", "namespace", "renewTime", "token"},
	}
	for _, format := range []string{formatJSON, formatYAML} {
		t.Run(format, func(t *testing.T) {
			var b bytes.Buffer
			if err := printList(&b, printOptions{format: format}, fixture(), now, false); err != nil {
				t.Fatal(err)
			}
			var list struct {
				Items []map[string]any `json:"items"`
			}
			var err error
			if format == formatJSON {
				err = json.Unmarshal(b.Bytes(), &list)
			} else {
				err = yaml.UnmarshalStrict(b.Bytes(), &list)
			}
			if err != nil {
				t.Fatalf("parsing the output: %v\n%s", err, b.String())
			}
			if len(list.Items) != 3 {
				t.Fatalf("got %d items; want 3", len(list.Items))
			}
			for _, it := range list.Items {
				name := it["name"].(string)
				if want, ok := wantKeys[name]; ok {
					var keys []string
					for k := range it {
						keys = append(keys, k)
					}
					slices.Sort(keys)
					if !slices.Equal(keys, want) {
						t.Errorf("%s: got keys %v; want %v", name, keys, want)
					}
				}
				if name == "orders/eu" {
					if it["token"] != "48211" || it["pod"] != "web-0" || it["session"] != session || it["held"] != true ||
						it["expireTime"] != "2026-03-01T12:00:13Z" || it["acquireTime"] != "2026-03-01T11:56:50Z" {
						t.Errorf("orders/eu: got %v", it)
					}
				}
			}
		})
	}
	var b bytes.Buffer
	if err := printList(&b, printOptions{format: formatJSON}, nil, now, false); err != nil {
		t.Fatal(err)
	}
	if got := b.String(); got != "{\n  \"items\": []\n}\n" {
		t.Errorf("empty list: got %q; want an empty items array", got)
	}
	// While watching, each JSON list is one line.
	b.Reset()
	if err := printList(&b, printOptions{format: formatJSON}, fixture(), now, true); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(b.String(), "\n"); n != 1 {
		t.Errorf("compact JSON: got %d lines; want 1", n)
	}
}

func TestPrintDescription(t *testing.T) {
	held := Description{
		Item:      ItemFromLease(lease(wire.KindLock, "shop", "orders/eu", heldBy("web-0/"+session, "48211", 3*time.Minute+10*time.Second, 2*time.Second), transitions(3))),
		HolderPod: &PodInfo{Name: "web-0", Phase: "Running", Node: "node-1", Ready: ptr.To(true)},
	}
	gone := held
	gone.HolderPod = &PodInfo{Name: "web-0", Error: "not found (the Pod is gone)"}
	free := Description{Item: ItemFromLease(lease(wire.KindElection, "shop", "leader", released("977", time.Hour)))}
	for _, tc := range []struct {
		name string
		d    Description
		want string
	}{{"held", held, `
Name:            orders/eu
Kind:            lock
Namespace:       shop
Lease:           lock-orders-eu-` + hash("orders/eu") + `
Holder:          web-0/5f0c2a7e9b1d4c3fa8e6d0b2c4e6f8a1
  Pod:           web-0
  Session:       5f0c2a7e9b1d4c3fa8e6d0b2c4e6f8a1
Token:           48211
Held since:      2026-03-01T11:56:50Z (3m10s ago)
Renewed:         2026-03-01T11:59:58Z (2s ago)
Expires in:      13s (estimate: renewTime + lease duration, by the holder's clock)
Lease duration:  15s
Transitions:     3
Holder Pod:      web-0
  Phase:         Running
  Node:          node-1
  Ready:         true
`}, {"pod not found", gone, `
Name:            orders/eu
Kind:            lock
Namespace:       shop
Lease:           lock-orders-eu-` + hash("orders/eu") + `
Holder:          web-0/5f0c2a7e9b1d4c3fa8e6d0b2c4e6f8a1
  Pod:           web-0
  Session:       5f0c2a7e9b1d4c3fa8e6d0b2c4e6f8a1
Token:           48211
Held since:      2026-03-01T11:56:50Z (3m10s ago)
Renewed:         2026-03-01T11:59:58Z (2s ago)
Expires in:      13s (estimate: renewTime + lease duration, by the holder's clock)
Lease duration:  15s
Transitions:     3
Holder Pod:      web-0: not found (the Pod is gone)
`}, {"free", free, `
Name:            leader
Kind:            election
Namespace:       shop
Lease:           election-leader-` + strings.TrimPrefix(contract.LeaseName(wire.KindElection, "leader"), "election-leader-") + `
Holder:          <none> (free)
Last token:      977
Last write:      2026-03-01T11:00:00Z (60m ago)
Lease duration:  15s
Transitions:     0
`}} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := printDescription(&b, tc.d, now); err != nil {
				t.Fatal(err)
			}
			if got, want := b.String(), strings.TrimPrefix(tc.want, "\n"); got != want {
				t.Errorf("got\n%s\nwant\n%s", got, want)
			}
		})
	}
	// JSON: the item's fields inline, the Pod under holderPod.
	b, err := json.Marshal(held)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	pod, _ := m["holderPod"].(map[string]any)
	if m["name"] != "orders/eu" || m["token"] != "48211" || pod["phase"] != "Running" || pod["node"] != "node-1" || pod["ready"] != true {
		t.Errorf("description JSON: got %s", b)
	}
}

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"orders/eu":          "orders/eu",
		"锁":                  "锁",
		"with space":         "with space",
		"\x1b[31mred":        `"\x1b[31mred"`,
		"tab\there":          `"tab\there"`,
		string([]byte{0xff}): `"\xff"`,
	} {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %s; want %s", in, got, want)
		}
	}
}

// TestPrintScriptFormats: -o name, -o jsonpath and --no-headers, as kubectl get prints them.
func TestPrintScriptFormats(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    printOptions
		want string
	}{
		{"name", printOptions{format: formatName}, "lock/nightly\nlock/idle\nlock/orders/eu\n"},
		{"jsonpath", printOptions{format: `jsonpath={range .items[?(@.held==true)]}{.name}={.token}{"\n"}{end}`}, "nightly=12\norders/eu=48211\n"},
		{"no headers", printOptions{noHeaders: true}, ""},
		{"jsonpath of a missing key", printOptions{format: "jsonpath={.items[1].holder}"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := printList(&b, tc.o, fixture(), now, false); err != nil {
				t.Fatal(err)
			}
			got := b.String()
			if tc.o.noHeaders {
				if strings.Contains(got, "HOLDER") || strings.Count(got, "\n") != len(fixture()) {
					t.Errorf("got\n%s\nwant %d rows and no header", got, len(fixture()))
				}
				return
			}
			if got != tc.want {
				t.Errorf("got %q; want %q", got, tc.want)
			}
		})
	}
	for _, bad := range []string{"jsonpath={.items[", "xml"} {
		if err := validFormat(bad); err == nil {
			t.Errorf("validFormat(%q): got nil; want a usage error", bad)
		}
	}
}
