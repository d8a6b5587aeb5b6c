package sim

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/metaparticle-io/sync/wire"
)

// foreignRelease is a misbehaving process in sc's Pod: it reads who holds lock name from the
// side-car's public API and asks to release it with the session that the holder identity
// names ("<pod>/<session>"), without the session's secret, which it cannot know. A side-car
// that took the public holder identity as the session's credential let it, and the hold ended
// without its application being told; now it must refuse (401), which the trace shows.
func (w *World) foreignRelease(sc *sidecar, name string) {
	hc := sc.httpClient()
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://side-car"+wire.LockPath(name), nil)
	resp, err := hc.Do(req)
	if err != nil {
		return
	}
	var st wire.LockState
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil || !st.Held {
		return
	}
	_, session, ok := strings.Cut(st.Holder, "/")
	if !ok {
		return
	}
	req, _ = http.NewRequestWithContext(ctx, http.MethodDelete, "http://side-car"+wire.SessionLockPath(session, name), nil)
	resp, err = hc.Do(req)
	if err != nil {
		return
	}
	resp.Body.Close()
	w.mu.Lock()
	w.tracef("%s: foreign DELETE of %s for session %s: %d", sc.pod, name, session, resp.StatusCode)
	w.mu.Unlock()
}
