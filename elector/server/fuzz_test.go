package server

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/metaparticle-io/sync/wire"
)

// FuzzDecodeAcquire feeds arbitrary bodies and content types to the decoding of an acquire
// request. Run it with
//
//	go test -run='^$' -fuzz=FuzzDecodeAcquire -fuzztime=10s ./elector/server/
//
// Invariants: no panic; a rejected request gets a 4xx code of the decoding family; an accepted
// one is in range and survives a JSON round trip unchanged.
func FuzzDecodeAcquire(f *testing.F) {
	for _, seed := range []struct{ body, ct string }{
		{"", ""},
		{"{}", "application/json"},
		{`{"try":true}`, "application/json"},
		{`{"timeoutMillis":5000}`, "application/json; charset=utf-8"},
		{`{"timeoutMillis":86400000}`, "application/json"},
		{`{"timeoutMillis":86400001}`, "application/json"},
		{`{"timeoutMillis":-1}`, "application/json"},
		{`{"try":true,"timeoutMillis":1}`, "application/json"},
		{`{"timeoutMillis":1e3}`, "application/json"},
		{`{"timeoutMillis":9223372036854775808}`, "application/json"},
		{`{"Try":true}`, "application/json"},
		{`{"try":null}`, "application/json"},
		{`null`, "application/json"},
		{`[]`, "application/json"},
		{`{"try":true}{}`, "application/json"},
		{`{"unknown":1}`, "application/json"},
		{`{}`, "text/plain"},
		{`{}`, ""},
		{"\xff\xfe", "application/json"},
		{strings.Repeat(" ", wire.MaxRequestBytes+1) + "{}", "application/json"},
	} {
		f.Add([]byte(seed.body), seed.ct)
	}
	allowed := map[wire.ErrorCode]bool{
		wire.CodeBadRequest: true, wire.CodeInvalidTimeout: true, wire.CodeTooLarge: true, wire.CodeUnsupportedType: true,
	}
	f.Fuzz(func(t *testing.T, body []byte, ct string) {
		r := httptest.NewRequest(http.MethodPost, "/v1/sessions/s/locks/x", bytes.NewReader(body))
		if ct != "" {
			r.Header.Set("Content-Type", ct)
		}
		req, err := decodeAcquire(httptest.NewRecorder(), r)
		if err != nil {
			code := wire.CodeOf(err)
			if !allowed[code] {
				t.Fatalf("decodeAcquire(%q, %q): got code %s; want one of the decoding codes", body, ct, code)
			}
			if s := statusOf(code); s < 400 || s > 499 {
				t.Fatalf("code %s: got status %d; want 4xx", code, s)
			}
			return
		}
		if req.TimeoutMillis < 0 || req.TimeoutMillis > wire.MaxTimeout.Milliseconds() || (req.Try && req.TimeoutMillis != 0) {
			t.Fatalf("decodeAcquire(%q): got %+v accepted; want it out of range rejected", body, req)
		}
		if len(body) > wire.MaxRequestBytes {
			t.Fatalf("got a body of %d bytes accepted; want at most %d", len(body), wire.MaxRequestBytes)
		}
		again, err := json.Marshal(req)
		if err != nil {
			t.Fatalf("Marshal(%+v): got %v; want nil", req, err)
		}
		r2 := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(again))
		r2.Header.Set("Content-Type", "application/json")
		req2, err := decodeAcquire(httptest.NewRecorder(), r2)
		if err != nil || req2 != req {
			t.Fatalf("round trip of %+v: got %+v, %v; want it unchanged", req, req2, err)
		}
	})
}
