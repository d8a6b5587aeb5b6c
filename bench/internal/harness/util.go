package harness

import (
	"cmp"
	"maps"
	"slices"

	"github.com/metaparticle-io/sync/sdk"
)

func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	return slices.Sorted(maps.Keys(m))
}

// lostOf counts the locks whose application was told it lost them.
func lostOf(locks []*sdk.Lock) int {
	n := 0
	for _, l := range locks {
		select {
		case <-l.Lost():
			n++
		default:
		}
	}
	return n
}
