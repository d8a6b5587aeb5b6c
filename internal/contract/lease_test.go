package contract_test

import (
	"regexp"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/metaparticle-io/sync/internal/contract"
	"github.com/metaparticle-io/sync/wire"
)

func TestLeaseName(t *testing.T) {
	long := strings.Repeat("Ab-", 100)
	for _, tc := range []struct {
		kind wire.Kind
		name string
		want string // a regexp the Lease name must match
	}{
		{wire.KindLock, "orders", `^lock-orders-[0-9a-f]{16}$`},
		{wire.KindElection, "orders", `^election-orders-[0-9a-f]{16}$`},
		{wire.KindLock, "Orders/EU.west", `^lock-orders-eu-west-[0-9a-f]{16}$`},
		{wire.KindLock, "--a__b--", `^lock-a-b-[0-9a-f]{16}$`},
		{wire.KindLock, "锁", `^lock-[0-9a-f]{16}$`},
		{wire.KindLock, ".", `^lock-[0-9a-f]{16}$`},
		{wire.KindLock, long, `^lock-ab(-ab){12}-a-[0-9a-f]{16}$`},
		{wire.KindLock, strings.Repeat("x", wire.MaxNameLength), `^lock-x{40}-[0-9a-f]{16}$`},
	} {
		got := contract.LeaseName(tc.kind, tc.name)
		if !regexp.MustCompile(tc.want).MatchString(got) {
			t.Errorf("contract.LeaseName(%s, %q) = %q; want a match of %s", tc.kind, tc.name, got, tc.want)
		}
		if msgs := validation.IsDNS1123Label(got); len(msgs) > 0 {
			t.Errorf("contract.LeaseName(%s, %q) = %q is not a DNS-1123 label: %v", tc.kind, tc.name, got, msgs)
		}
		if len(got) > 66 {
			t.Errorf("contract.LeaseName(%s, %q) is %d characters long; want at most 66", tc.kind, tc.name, len(got))
		}
		if again := contract.LeaseName(tc.kind, tc.name); again != got {
			t.Errorf("contract.LeaseName is not deterministic: %q then %q", got, again)
		}
	}
}

func TestLeaseNamesNeverCollideOnLookalikes(t *testing.T) {
	foo := contract.LeaseName(wire.KindLock, "foo")
	names := []string{"foo", "Foo", "FOO", "foo!", "foo ", " foo", "foo-", "f.o.o", "foo\u00a0", strings.TrimPrefix(foo, "lock-")}
	seen := map[string]string{}
	for _, kind := range []wire.Kind{wire.KindLock, wire.KindElection} {
		for _, n := range names {
			l := contract.LeaseName(kind, n)
			if prev, dup := seen[l]; dup {
				t.Errorf("%s %q and %q share the Lease %s", kind, n, prev, l)
			}
			seen[l] = string(kind) + " " + n
		}
	}
}
