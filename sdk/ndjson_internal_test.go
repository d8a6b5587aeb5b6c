package sdk

import (
	"bufio"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// countingBody is a stream body that counts its Close calls.
type countingBody struct {
	io.Reader
	closes atomic.Int32
	close  func() // called on every Close, if set
}

func (b *countingBody) Close() error {
	b.closes.Add(1)
	if b.close != nil {
		b.close()
	}
	return nil
}

// failingReader returns its data, then err instead of io.EOF.
type failingReader struct {
	data io.Reader
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	n, err := r.data.Read(p)
	if err == io.EOF {
		return n, r.err
	}
	return n, err
}

// readAll reads r to its end and describes each line: the line, prefixed with "malformed " when
// it does not decode into a struct{ A int }.
func readAll(r *ndjsonReader) []string {
	var got []string
	for r.next() {
		var v struct{ A int }
		if err := r.decode(&v); err != nil {
			got = append(got, "malformed "+string(r.line()))
			continue
		}
		got = append(got, string(r.line()))
	}
	return got
}

// TestNDJSONReader covers how the reader splits, skips and decodes lines and how its stream ends
// without its context ending.
func TestNDJSONReader(t *testing.T) {
	// padded returns a value whose line is n bytes long.
	padded := func(n int) string { return `{"A":1,"pad":"` + strings.Repeat("x", n-16) + `"}` }
	longest, tooLong := padded(maxLineBytes-1), padded(maxLineBytes)
	tests := []struct {
		name    string
		body    string
		readErr error // what the body returns after body; nil: io.EOF
		want    []string
		wantErr error
	}{
		{name: "empty stream", body: "", wantErr: errEndOfStream},
		{name: "values", body: `{"A":1}` + "\n" + `{"A":2}` + "\n", want: []string{`{"A":1}`, `{"A":2}`}, wantErr: errEndOfStream},
		{name: "last line without newline", body: `{"A":1}` + "\n" + `{"A":2}`, want: []string{`{"A":1}`, `{"A":2}`}, wantErr: errEndOfStream},
		{name: "blank lines skipped, white space and CRLF trimmed", body: "\n  \n\t{\"A\":1}  \r\n\r\n \t \n{\"A\":2}\n\n",
			want: []string{`{"A":1}`, `{"A":2}`}, wantErr: errEndOfStream},
		{name: "only blank lines", body: "\n \r\n\t\n", wantErr: errEndOfStream},
		{name: "malformed line does not end the stream", body: "{oops\n" + `{"A":"not a number"}` + "\n" + `{"A":3}` + "\n",
			want: []string{"malformed {oops", `malformed {"A":"not a number"}`, `{"A":3}`}, wantErr: errEndOfStream},
		{name: "longest line", body: longest + "\n" + `{"A":2}` + "\n",
			want: []string{longest, `{"A":2}`}, wantErr: errEndOfStream},
		{name: "line too long ends the stream", body: `{"A":1}` + "\n" + tooLong + "\n" + `{"A":2}` + "\n",
			want: []string{`{"A":1}`}, wantErr: bufio.ErrTooLong},
		{name: "read error ends the stream", body: `{"A":1}` + "\n" + `{"A":2}` + "\n", readErr: io.ErrUnexpectedEOF,
			want: []string{`{"A":1}`, `{"A":2}`}, wantErr: io.ErrUnexpectedEOF},
		{name: "read error within a line yields the partial line first", body: `{"A":1}` + "\n" + `{"A":`, readErr: io.ErrUnexpectedEOF,
			want: []string{`{"A":1}`, `malformed {"A":`}, wantErr: io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var data io.Reader = strings.NewReader(tt.body)
			if tt.readErr != nil {
				data = &failingReader{data: data, err: tt.readErr}
			}
			body := &countingBody{Reader: data}
			r := newNDJSONReader(context.Background(), body)
			got := readAll(r)
			if !slices.Equal(got, tt.want) {
				t.Errorf("got lines %.200q; want %.200q", got, tt.want)
			}
			if err := r.err(); err != tt.wantErr {
				t.Errorf("got err() %v; want %v", err, tt.wantErr)
			}
			if r.next() {
				t.Errorf("got next() true after the end; want false")
			}
			if r.line() != nil {
				t.Errorf("got line() %.40q after the end; want nil", r.line())
			}
			if n := body.closes.Load(); n != 0 {
				t.Errorf("got %d closes of the body before close(); want 0", n)
			}
			r.close()
			r.close()
			if n := body.closes.Load(); n != 2 {
				t.Errorf("got %d closes of the body after close() twice; want 2", n)
			}
		})
	}
}

// TestNDJSONReaderContext: the reader's context ending closes the body, which ends a blocked
// read, and err says why; close stops that.
func TestNDJSONReaderContext(t *testing.T) {
	cause := errors.New("the session ended")
	tests := []struct {
		name       string
		closeFirst bool // close the reader before the context ends
		lines      int  // values written before the context ends
		wantErr    error
		wantCloses int32
	}{
		{name: "context ends while reading", lines: 0, wantErr: cause, wantCloses: 1},
		{name: "context ends after values", lines: 2, wantErr: cause, wantCloses: 1},
		{name: "reader closed, then context ends", closeFirst: true, wantErr: nil, wantCloses: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			defer pw.Close()
			body := &countingBody{Reader: pr, close: func() { pr.Close() }}
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			r := newNDJSONReader(ctx, body)
			go func() {
				for range tt.lines {
					if _, err := io.WriteString(pw, `{"A":1}`+"\n"); err != nil {
						return
					}
				}
			}()
			for i := range tt.lines {
				if !r.next() {
					t.Fatalf("line %d: got next() false (%v); want a line", i, r.err())
				}
			}
			if tt.closeFirst {
				r.close()
			}
			// End the context while next is blocked on the silent stream.
			timer := time.AfterFunc(10*time.Millisecond, func() { cancel(cause) })
			defer timer.Stop()
			if !tt.closeFirst {
				if r.next() {
					t.Fatalf("got next() true; want false once the context ended")
				}
			} else {
				<-ctx.Done()
			}
			if err := r.err(); err != tt.wantErr {
				t.Errorf("got err() %v; want %v", err, tt.wantErr)
			}
			// The context's closing runs in its own goroutine: give it time to happen.
			deadline := time.Now().Add(time.Second)
			for body.closes.Load() < tt.wantCloses && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			time.Sleep(10 * time.Millisecond) // and to happen too often, if it would
			if n := body.closes.Load(); n != tt.wantCloses {
				t.Errorf("got %d closes of the body; want %d", n, tt.wantCloses)
			}
		})
	}
}
