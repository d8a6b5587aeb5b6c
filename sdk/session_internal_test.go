package sdk

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/metaparticle-io/sync/wire"
)

// TestGrantAlreadyLost covers the race the black-box tests cannot order: the event stream reports
// a loss of a grant before the acquire's own answer arrives. The grant must not become a hold,
// and the name must be given back.
func TestGrantAlreadyLost(t *testing.T) {
	tests := []struct {
		name     string
		lost     wire.Grant // the loss reported while acquiring
		grant    string     // token of the grant that then arrives
		wantVoid bool
	}{
		{name: "loss of this grant", lost: wire.Grant{Name: "test", Token: "7"}, grant: "7", wantVoid: true},
		{name: "loss with unreadable token", lost: wire.Grant{Name: "test", Token: "?"}, grant: "7", wantVoid: true},
		{name: "loss of an earlier grant", lost: wire.Grant{Name: "test", Token: "6"}, grant: "7", wantVoid: false},
		{name: "loss of another name", lost: wire.Grant{Name: "other", Token: "7"}, grant: "7", wantVoid: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var deletes int
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodDelete && strings.HasSuffix(r.URL.Path, "/locks/test") {
					deletes++
					w.WriteHeader(http.StatusNoContent)
					return
				}
				t.Errorf("unexpected request %s %s", r.Method, r.URL.Path)
				w.WriteHeader(http.StatusInternalServerError)
			}))
			defer srv.Close()
			c, err := NewClient(WithAddress(srv.Listener.Addr().String()))
			if err != nil {
				t.Fatal(err)
			}
			s := &session{c: c, id: "s1", ttl: wire.DefaultSessionTTL, locks: map[string]*lockEntry{}, elections: map[string]*Election{}}
			s.ctx, s.cancel = context.WithCancelCause(context.Background())
			s.conn, s.closeConn = context.WithCancelCause(context.Background())
			le := &lockEntry{}
			s.locks["test"] = le

			lost := tt.lost
			s.dispatchLoss(wire.Event{Type: wire.EventLost, Kind: wire.KindLock, Grant: &lost})
			h, err := s.granted(le, "test", wire.Grant{Name: "test", Token: tt.grant}, time.Now())
			if tt.wantVoid {
				if h != nil || !errors.Is(err, errVoid) {
					t.Fatalf("got hold %v, error %v; want no hold and errVoid", h, err)
				}
				if deletes != 1 {
					t.Errorf("got %d releases; want 1 (the void grant given back)", deletes)
				}
				if s.locks["test"] != nil {
					t.Errorf("got the name still registered; want it free")
				}
				return
			}
			if err != nil || h == nil || h.token != 7 {
				t.Fatalf("got hold %v, error %v; want the hold of token 7", h, err)
			}
			if deletes != 0 {
				t.Errorf("got %d releases; want none", deletes)
			}
		})
	}
}
