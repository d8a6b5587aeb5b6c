package sdk

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
)

// maxLineBytes bounds one line of a stream: a line of this many bytes or more, not counting its
// newline, ends the stream with bufio.ErrTooLong.
const maxLineBytes = 1 << 20

// errEndOfStream is why an ndjsonReader's stream ended when the side-car ended it cleanly.
var errEndOfStream = errors.New("end of stream")

// ndjsonReader reads a stream of newline-delimited JSON values from the side-car: the events of a
// session (wire.Event) and the states of an election being watched (wire.ElectionState). It is
// used like a bufio.Scanner:
//
//	r := newNDJSONReader(ctx, resp.Body)
//	defer r.close()
//	for r.next() {
//		var v T
//		if err := r.decode(&v); err != nil {
//			// r.line() is malformed: report it with the line.
//		}
//	}
//	// r.err() says why the stream ended: never nil.
//
// Lines that are blank (empty or white space only) are skipped: they are neither values nor
// errors. A line that is not JSON of the expected type does not end the stream; what to do with
// it is the caller's choice. The stream ends at the first of: a clean end (errEndOfStream), a
// read error, a line too long (bufio.ErrTooLong, see maxLineBytes), or ctx ending (its cause,
// rather than the read error that closing the body causes). If the stream ends within a line,
// that partial line is still returned, as the last one; it is usually malformed.
//
// The session's event stream (session.openStream, session.read) ends the session on a malformed
// line or on any end of the stream; a watch (Election.Watch) fails on a malformed line and reopens
// a stream that ended.
//
// An ndjsonReader is not safe for concurrent use.
type ndjsonReader struct {
	ctx  context.Context
	body io.ReadCloser
	sc   *bufio.Scanner
	stop func() bool // cancels the closing of body when ctx ends
	cur  []byte      // the current line, trimmed
	end  error       // why the stream ended; nil until next returns false
}

// newNDJSONReader returns a reader of body, which it closes when ctx ends (so that a read blocked
// on a silent stream returns) or when close is called.
func newNDJSONReader(ctx context.Context, body io.ReadCloser) *ndjsonReader {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 0, 4096), maxLineBytes)
	return &ndjsonReader{
		ctx:  ctx,
		body: body,
		sc:   sc,
		stop: context.AfterFunc(ctx, func() { body.Close() }),
	}
}

// next advances to the next line that is not blank and reports whether there is one. Once it has
// returned false, it keeps doing so and err says why.
func (r *ndjsonReader) next() bool {
	if r.end != nil {
		return false
	}
	for r.sc.Scan() {
		if r.cur = bytes.TrimSpace(r.sc.Bytes()); len(r.cur) > 0 {
			return true
		}
	}
	r.cur = nil
	switch {
	case context.Cause(r.ctx) != nil:
		r.end = context.Cause(r.ctx)
	case r.sc.Err() != nil:
		r.end = r.sc.Err()
	default:
		r.end = errEndOfStream
	}
	return false
}

// line returns the current line without its surrounding white space, for error messages. It is
// valid until the next call to next.
func (r *ndjsonReader) line() []byte { return r.cur }

// decode decodes the current line into v (json.Unmarshal). An error means the line is malformed;
// the stream can still be read on.
func (r *ndjsonReader) decode(v any) error { return json.Unmarshal(r.cur, v) }

// err returns why the stream ended, once next has returned false: errEndOfStream when the
// side-car ended it, context.Cause of the reader's context if that context ended, or the read
// error (bufio.ErrTooLong for a line too long). It returns nil while the stream goes on.
func (r *ndjsonReader) err() error { return r.end }

// close closes the stream. It may be called more than once.
func (r *ndjsonReader) close() {
	r.stop()
	r.body.Close()
}
