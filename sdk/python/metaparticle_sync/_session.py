"""A session with the side-car: the unit of ownership of version 1 of its API (docs/api.md).

A session is opened with POST /v1/sessions and lives while the client proves it is alive: a
keep-alive thread POSTs /keepalive every TTL/3, and a reader thread holds the event stream
(GET /events) open, on which the side-car reports lost locks and changes of leadership. Closing
the stream ends the session at the side-car, releasing everything it holds; the operating system
does that when the process dies.

The session's ID is public (it is part of the holder identity "<pod>/<id>" that anyone can
read), so the side-car also returns a secret when it opens the session, and every call on the
session (keep-alive, events, locks, elections, close) carries it as
``Authorization: Bearer <secret>``. The secret is kept in a _http.Secret, whose repr is
redacted, and is never logged nor put in a message. A side-car that returns no secret (one older
than session secrets) checks none, and then no Authorization header is sent.

The session ends, exactly once, when the stream breaks or reports the session closed, when the
side-car stays silent (not even a ping) for three quarters of the TTL, when no keep-alive is
acknowledged for three quarters of the TTL, when the side-car says it no longer knows the
session, or when its owner closes it. The quarter of the TTL kept in reserve makes the client
give up before the side-car can end the session and hand its holds to someone else. Whoever
owns the session is told through on_end, before anything else can happen to its holds.
"""

import json
import logging
import os
import socket
import threading
import time

from . import _http
from .version import __version__

log = logging.getLogger("metaparticle_sync")

_MAX_EVENT_BYTES = 1 << 20


class SessionEnded(Exception):
    """Internal: the session ended under a request."""


class Session:
    """One session. Create it with Session.open. It calls on_event(session, event) for lost,
    elected and deposed events, and on_end(session, reason) once when it ends, unless it was
    ended with notify=False. Both are called from the session's threads."""

    def __init__(self, address, data, on_event, on_end):
        self.address = address
        self.id = data["id"]
        self.holder = data.get("holder", "")
        self.ttl = data["ttlMillis"] / 1000.0
        self._secret = _http.Secret.parse(data.get("secret"))  # None: an older side-car
        self._on_event = on_event
        self._on_end = on_end
        self._mu = threading.Lock()
        self._ended = threading.Event()
        self.end_reason = None
        self._conns = set()  # requests in flight, aborted when the session ends
        self._stream = None
        self._closing = False
        self._acked = time.monotonic()

    def __repr__(self):
        return "<metaparticle_sync session %s %s at %s>" % (self.id, "ended" if self.ended else "open", self.address.hostport)

    @property
    def deadline(self):
        """How long the client trusts the session without hearing from the side-car."""
        return self.ttl * 3 / 4

    @property
    def ended(self):
        return self._ended.is_set()

    @classmethod
    def open(cls, address, ttl, label, retry_timeout, on_event, on_end, stop=None):
        """Opens a session and its event stream; returns once the stream said ready."""
        sent = time.monotonic()
        body = {"ttlMillis": int(ttl * 1000), "client": "python-sdk/%s pid=%d %s" % (__version__, os.getpid(), label)}
        data = _http.call_with_retry(address, "POST", "/v1/sessions", body, timeout=max(ttl, 5.0),
                                     retry_timeout=retry_timeout, stop=stop, sensitive=True)
        if (not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]
                or not isinstance(data.get("ttlMillis"), int) or data["ttlMillis"] <= 0):
            raise _http.SyncError("POST /v1/sessions: malformed response %r (is the side-car at %s?)" % (
                _http.redacted(data), address.hostport))
        try:
            s = cls(address, data, on_event, on_end)
        except ValueError as e:
            # The side-car opened a session this client cannot use. Without a usable secret it
            # cannot be closed either; it ends when its TTL passes without a keep-alive.
            raise _http.SyncError("POST /v1/sessions: %s (is the side-car at %s?)" % (e, address.hostport)) from None
        if s._secret is None:
            log.debug("metaparticle_sync: the side-car at %s returned no session secret (it predates them): "
                      "calls on session %s carry no Authorization header", address.hostport, s.id)
        s._acked = sent
        try:
            s._open_stream()
        except BaseException:
            s.close(notify=False)
            raise
        threading.Thread(target=s._read, name="metaparticle-sync-events-" + s.id[:8], daemon=True).start()
        threading.Thread(target=s._keep_alive, name="metaparticle-sync-keepalive-" + s.id[:8], daemon=True).start()
        return s

    def _open_stream(self):
        path = "/v1/sessions/%s/events" % self.id
        conn = _http.Connection(self.address, timeout=self.deadline)
        self._stream = conn
        try:
            resp = conn.request("GET", path, secret=self._secret)
        except _http._Transport as e:
            raise _http.SidecarUnreachable(self.address, e) from None
        if resp.status != 200:
            data = resp.read()
            conn.close()
            _http.decode(self.address, "GET", path, resp.status, data)  # raises APIError
            raise _http.SyncError("GET %s: status %d" % (path, resp.status))
        self._resp = resp
        ev = self._next_event()
        if ev is None or ev.get("type") != "ready":
            raise _http.SyncError("GET %s: the first event is %r, not ready (is the side-car at %s?)" % (path, ev, self.address.hostport))

    def _next_event(self):
        """Reads the next event; None at the end of the stream. Raises on a broken stream."""
        while True:
            line = self._resp.readline(_MAX_EVENT_BYTES)
            if not line:
                return None
            line = line.strip()
            if not line:
                continue
            ev = json.loads(line.decode("utf-8"))
            if not isinstance(ev, dict):
                raise ValueError("malformed event %r" % line[:120])
            return ev

    def _read(self):
        try:
            while True:
                ev = self._next_event()
                if ev is None:
                    self.end("the event stream ended")
                    return
                kind = ev.get("type")
                if kind == "closed":
                    self.end("the side-car closed the session: %s" % (ev.get("reason") or "no reason given"))
                    return
                if kind in ("lost", "elected", "deposed") and not self.ended:
                    self._on_event(self, ev)
                # ready, ping and unknown types carry nothing to act on.
        except socket.timeout:
            self.end("the side-car sent nothing on the event stream for %gs (session TTL %gs)" % (self.deadline, self.ttl))
        except Exception as e:  # a broken stream, or the stream closed by end() under us
            self.end("the event stream broke: %s" % _http._describe(e))

    def _keep_alive(self):
        every = self.ttl / 3
        path = "/v1/sessions/%s/keepalive" % self.id
        nxt = self._acked + every
        while not self._ended.wait(max(0.0, nxt - time.monotonic())):
            sent = time.monotonic()
            try:
                self.request("POST", path, timeout=every)
                self._acked = sent
                nxt = sent + every
            except SessionEnded:
                return
            except _http.APIError as e:
                if e.code == "no_session":
                    self.end("the side-car no longer knows the session: %s" % e.message)
                    return
                if e.code == "unauthorized":
                    # The side-car refuses this client's secret for the session: it cannot
                    # keep the session alive, so give it up now rather than at the deadline.
                    self.end("the side-car refused the session's secret: %s" % e.message)
                    return
                nxt = time.monotonic() + min(0.2, every / 3)
            except _http._Transport:
                nxt = time.monotonic() + min(0.2, every / 3)
            if time.monotonic() - self._acked >= self.deadline:
                self.end("no keep-alive acknowledged for %gs (session TTL %gs)" % (self.deadline, self.ttl))
                return

    def request(self, method, path, body=None, timeout=None):
        """Makes a request for the session. It is aborted when the session ends (SessionEnded);
        APIError and _Transport are raised as they come."""
        mine = []

        def hook(conn):
            with self._mu:
                if conn is None:
                    for c in mine:
                        self._conns.discard(c)
                    return
                mine.append(conn)
                self._conns.add(conn)
                if self.ended:
                    conn.abort()

        try:
            return _http.call(self.address, method, path, body, timeout, conn_hook=hook, secret=self._secret)
        except (_http._Transport, _http.APIError):
            if self.ended:
                raise SessionEnded(self.end_reason) from None
            raise

    def end(self, reason, notify=True):
        """Ends the session (idempotent): every request in flight fails, the event stream is
        closed (which ends the session at the side-car), and on_end(session, reason) is called."""
        with self._mu:
            if self._ended.is_set():
                return
            self.end_reason = reason
            self._ended.set()
            conns = list(self._conns)
            notify = notify and not self._closing
        for c in conns:
            c.abort()
        if self._stream is not None:
            self._stream.abort()
            self._stream.close()
        if notify:
            log.warning("metaparticle_sync: session %s with the side-car at %s ended: %s", self.id, self.address.hostport, reason)
            self._on_end(self, reason)

    def close(self, notify=False):
        """Ends the session on purpose: tells the side-car (best effort), then ends it here."""
        with self._mu:
            self._closing = True  # the side-car's "closed" event is no news
        if not self.ended:
            try:
                _http.call(self.address, "DELETE", "/v1/sessions/%s" % self.id, timeout=max(1.0, self.deadline),
                           secret=self._secret)
            except (_http._Transport, _http.APIError):
                pass  # closing the event stream below ends the session all the same
        self.end("closed by the application", notify=notify)
