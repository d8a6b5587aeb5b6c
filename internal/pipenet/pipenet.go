// Package pipenet is an in-memory network for HTTP in tests: a net.Listener whose connections
// are net.Pipe pairs. Unlike sockets, their reads and writes block durably inside a
// testing/synctest bubble, so a bubble can wait until every client and server goroutine is
// parked, and its virtual time can advance.
package pipenet

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
)

// Listener hands the server ends of in-memory connections to a server, for instance an
// http.Server's Serve. Create it with NewListener; it is safe for concurrent use.
type Listener struct {
	wrap   func(net.Conn) net.Conn
	accept chan net.Conn
	done   chan struct{}
	once   sync.Once
}

// NewListener returns a listener. wrap, if not nil, wraps the server end of every connection
// (to delay or gate its reads and writes, say).
func NewListener(wrap func(net.Conn) net.Conn) *Listener {
	return &Listener{wrap: wrap, accept: make(chan net.Conn), done: make(chan struct{})}
}

// Accept implements net.Listener.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.accept:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener: Dial fails from now on. Connections already made stay open.
func (l *Listener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// Addr implements net.Listener.
func (l *Listener) Addr() net.Addr { return addr{} }

// ErrRefused is Dial's error once the listener is closed.
var ErrRefused = errors.New("pipenet: connection refused")

// Dial returns the client end of a new connection once the server has accepted it.
func (l *Listener) Dial(ctx context.Context) (net.Conn, error) {
	client, server := net.Pipe()
	var s net.Conn = server
	if l.wrap != nil {
		s = l.wrap(server)
	}
	select {
	case l.accept <- s:
		return client, nil
	case <-l.done:
		client.Close()
		server.Close()
		return nil, ErrRefused
	case <-ctx.Done():
		client.Close()
		server.Close()
		return nil, ctx.Err()
	}
}

// Transport returns an HTTP transport whose every connection, to any address, is one of l's.
func (l *Listener) Transport() *http.Transport {
	return &http.Transport{
		DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return l.Dial(ctx) },
		MaxIdleConnsPerHost: 16,
	}
}

type addr struct{}

func (addr) Network() string { return "pipe" }
func (addr) String() string  { return "pipe" }
