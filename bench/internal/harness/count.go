package harness

import (
	"maps"
	"net/http"
	"net/url"
	"strings"
	"sync"
)

// Verb returns the Kubernetes API verb of a request to the API server: get, list, watch,
// create, update, patch, delete or deletecollection, as the API server's audit log and
// apiserver_request_total would name it. Requests outside the resource API (discovery, /version,
// /healthz) are "other".
func Verb(method string, u *url.URL) string {
	segs := strings.Split(strings.Trim(u.Path, "/"), "/")
	// /api/v1/... or /apis/<group>/<version>/...
	var rest []string
	switch {
	case len(segs) >= 2 && segs[0] == "api":
		rest = segs[2:]
	case len(segs) >= 3 && segs[0] == "apis":
		rest = segs[3:]
	default:
		return "other"
	}
	if len(rest) == 0 {
		return "other" // discovery of a group version
	}
	// namespaces/<ns>/<resource>... or <resource>...; "namespaces/<ns>" alone is the namespace.
	if rest[0] == "namespaces" && len(rest) >= 3 {
		rest = rest[2:]
	}
	named := len(rest) >= 2
	switch method {
	case http.MethodGet, http.MethodHead:
		q := u.Query().Get("watch")
		if q == "true" || q == "1" {
			return "watch"
		}
		if named {
			return "get"
		}
		return "list"
	case http.MethodPost:
		return "create"
	case http.MethodPut:
		return "update"
	case http.MethodPatch:
		return "patch"
	case http.MethodDelete:
		if named {
			return "delete"
		}
		return "deletecollection"
	}
	return "other"
}

// IsWrite reports whether verb changes state in etcd.
func IsWrite(verb string) bool {
	switch verb {
	case "create", "update", "patch", "delete", "deletecollection":
		return true
	}
	return false
}

// Counter counts the requests that pass through the round trippers it wraps, by verb. It is safe
// for concurrent use; wrap every rest.Config of a component (or of a group of components) with
// the same Counter through rest.Config.Wrap(c.Wrap).
type Counter struct {
	mu     sync.Mutex
	counts map[string]int
}

// NewCounter returns an empty Counter.
func NewCounter() *Counter { return &Counter{counts: map[string]int{}} }

// Wrap returns rt with counting in front of it.
func (c *Counter) Wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		c.Add(Verb(r.Method, r.URL), 1)
		return rt.RoundTrip(r)
	})
}

// Add counts n requests of verb.
func (c *Counter) Add(verb string, n int) {
	c.mu.Lock()
	c.counts[verb] += n
	c.mu.Unlock()
}

// Reset sets every count to zero.
func (c *Counter) Reset() {
	c.mu.Lock()
	clear(c.counts)
	c.mu.Unlock()
}

// Snapshot returns a copy of the counts.
func (c *Counter) Snapshot() Counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.counts)
}

// Counts are request counts by verb.
type Counts map[string]int

// Total returns the number of requests of every verb.
func (c Counts) Total() int {
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}

// Writes returns the number of requests that write.
func (c Counts) Writes() int {
	n := 0
	for k, v := range c {
		if IsWrite(k) {
			n += v
		}
	}
	return n
}

// Plus returns the sum of c and d.
func (c Counts) Plus(d Counts) Counts {
	s := maps.Clone(c)
	if s == nil {
		s = Counts{}
	}
	for k, v := range d {
		s[k] += v
	}
	return s
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
