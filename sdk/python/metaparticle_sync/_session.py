"""A session with the side-car: the unit of ownership of version 1 of its API (docs/api.md).

A session is opened with POST /v1/sessions and lives while the client proves it is alive: a
keep-alive thread POSTs /keepalive every TTL/3 (or more often, see below), and a reader thread
holds the event stream (GET /events) open, on which the side-car reports lost locks and changes
of leadership. Closing the stream ends the session at the side-car, releasing everything it
holds; the operating system does that when the process dies.

The session's ID is public (it is part of the holder identity "<pod>/<id>" that anyone can
read), so the side-car also returns a secret when it opens the session, and every call on the
session (keep-alive, events, locks, elections, close) carries it as
``Authorization: Bearer <secret>``. The secret is kept in a _http.Secret, whose repr is
redacted, and is never logged nor put in a message. A side-car that returns no secret (one older
than session secrets) checks none, and then no Authorization header is sent.

Hold validity. A side-car can be paused (SIGSTOP, a frozen node) and then cannot say that a
hold is lost, while other Pods may take it about a lease duration after the pause began: far
sooner than a long TTL's three quarters. So every grant says for how long it is valid
("validForMillis"), and every keep-alive answer lists the session's holds with the validity
the side-car guarantees from then. The client anchors each validity at the moment it sent the
request that returned it (never at receipt, which may be much later), trusts a hold until
anchor + validity, and when that passes without a newer confirmation it ends the session: every
hold is reported lost, and closing the stream makes the side-car release them (a release of one
hold could not name which hold it means). Keep-alives therefore go every
min(TTL/3, keepAliveMillis), keepAliveMillis being what the side-car asked for when the session
was opened. An elected event carries a validity too, but an event is not anchored (it may have
waited in a paused side-car), so such a hold is only awaited (await_confirmation) until a
keep-alive sent after the event confirms it; the client sends one at once. A validity
watchdog thread, started with the first hold that has one, ends the session when a validity
runs out. A side-car that returns no validity (one older than it) gets none of this, and the
rules below alone apply.

The session ends, exactly once, when the stream breaks or reports the session closed, when the
side-car stays silent (not even a ping) for three quarters of the TTL, when no keep-alive is
acknowledged for three quarters of the TTL, when a hold's validity runs out unconfirmed, when
the side-car says it no longer knows the session, or when its owner closes it. The quarter of
the TTL kept in reserve makes the client give up before the side-car can end the session and
hand its holds to someone else. Whoever owns the session is told through on_end, before anything
else can happen to its holds.
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


def millis(value):
    """A validity in milliseconds from the side-car: a positive int, or 0 when absent or not one
    (a side-car older than validities sends none)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return 0
    return value


def token_of(value):
    """A fencing token (a decimal string on the wire) as an int, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isdigit() and value.isascii():
        return int(value)
    return None


class _Hold:
    """A hold of the session whose validity the side-car gives: trusted until ``until``
    (time.monotonic()), or, while ``until`` is None, awaiting a keep-alive sent at ``since`` or
    later to confirm it."""

    __slots__ = ("kind", "name", "token", "until", "since")

    def __init__(self, kind, name, token, until=None, since=None):
        self.kind, self.name, self.token, self.until, self.since = kind, name, token, until, since

    def describe(self):
        return "%s %r (token %d)" % (self.kind, self.name, self.token)


class Session:
    """One session. Create it with Session.open. It calls on_event(session, event) for lost,
    elected and deposed events, on_confirmed(session, kind, name, token) when a keep-alive
    confirms a hold that await_confirmation registered, and on_end(session, reason) once when it
    ends, unless it was ended with notify=False. All are called from the session's threads."""

    def __init__(self, address, data, on_event, on_end, on_confirmed=None):
        self.address = address
        self.id = data["id"]
        self.holder = data.get("holder", "")
        self.ttl = data["ttlMillis"] / 1000.0
        # How often keep-alives go: a third of the TTL, or what the side-car asked for (often
        # enough to confirm each hold's validity before it runs out), whichever is shorter.
        self.every = self.ttl / 3
        ka = millis(data.get("keepAliveMillis"))
        if ka:
            self.every = min(self.every, ka / 1000.0)
        self._secret = _http.Secret.parse(data.get("secret"))  # None: an older side-car
        self._on_event = on_event
        self._on_end = on_end
        self._on_confirmed = on_confirmed
        self._mu = threading.Lock()
        self._cv = threading.Condition(self._mu)  # wakes the validity watchdog
        self._ended = threading.Event()
        self._wake = threading.Event()  # wakes the keep-alive thread: a keep-alive now, or the end
        self.end_reason = None
        self._conns = set()  # requests in flight, aborted when the session ends
        self._stream = None
        self._closing = False
        self._acked = time.monotonic()
        self._holds = {}  # (kind, name) -> _Hold, for holds with a validity
        self._watching = False  # the watchdog thread runs
        # The API server trouble the side-car last reported (a "degraded" event) as an APIError,
        # or None: none, or it reported "recovered".
        self.degraded = None

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
    def open(cls, address, ttl, label, retry_timeout, on_event, on_end, stop=None, on_confirmed=None):
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
            s = cls(address, data, on_event, on_end, on_confirmed)
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
                if kind == "degraded":
                    self.degraded = _http.APIError("GET", "/v1/sessions/%s/events" % self.id, 503,
                                                   ev.get("code") or "unavailable", ev.get("reason") or "no reason given")
                elif kind == "recovered":
                    self.degraded = None
                if kind in ("lost", "deposed"):
                    self._ended_by_event(ev)
                if kind in ("lost", "elected", "deposed") and not self.ended:
                    self._on_event(self, ev)
                # ready, ping and unknown types carry nothing to act on.
        except socket.timeout:
            self.end("the side-car sent nothing on the event stream for %gs (session TTL %gs)" % (self.deadline, self.ttl))
        except Exception as e:  # a broken stream, or the stream closed by end() under us
            self.end("the event stream broke: %s" % _http._describe(e))

    def _ended_by_event(self, ev):
        """Forgets the validity of the hold that a lost or deposed event ends."""
        grant = ev.get("grant")
        if not isinstance(grant, dict):
            return
        kind = ev.get("kind") or ("election" if ev.get("type") == "deposed" else "lock")
        tok = token_of(grant.get("token"))
        with self._mu:
            h = self._holds.get((kind, grant.get("name")))
            if h is not None and (tok is None or tok >= h.token):  # tokens only grow
                del self._holds[(kind, h.name)]
                self._cv.notify_all()

    # ---- keep-alives and validity ----

    def _keep_alive(self):
        path = "/v1/sessions/%s/keepalive" % self.id
        nxt = self._acked + self.every
        while True:
            self._wake.wait(max(0.0, nxt - time.monotonic()))
            # Cleared before sending: whoever asked for a keep-alive before now gets one sent
            # after the ask.
            self._wake.clear()
            if self.ended:
                return
            sent = time.monotonic()
            try:
                resp = self.request("POST", path, timeout=self.ttl / 3)
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
                nxt = time.monotonic() + min(0.2, self.every / 3)
            except _http._Transport:
                nxt = time.monotonic() + min(0.2, self.every / 3)
            else:
                self._confirm(sent, resp)
                nxt = sent + self.every
            if time.monotonic() - self._acked >= self.deadline:
                self.end("no keep-alive acknowledged for %gs (session TTL %gs)" % (self.deadline, self.ttl))
                return

    def confirm_once(self, timeout=None):
        """Sends a keep-alive now, from the caller's thread, and applies the validity it
        confirms. A failure is left to the keep-alive thread and the validity watchdog. timeout
        (seconds) bounds the wait for the answer, at most TTL/3."""
        sent = time.monotonic()
        try:
            resp = self.request("POST", "/v1/sessions/%s/keepalive" % self.id,
                                timeout=self.ttl / 3 if timeout is None else min(timeout, self.ttl / 3))
        except (SessionEnded, _http.APIError, _http._Transport):
            return
        self._confirm(sent, resp)

    def _confirm(self, sent, resp):
        """Applies the answer to a keep-alive sent at sent: the session lives, and each hold it
        lists is trusted until sent plus its validity. That is no later than the side-car's own
        deadline for the hold, since the side-car measured the validity after sent."""
        confirmed = []
        with self._mu:
            if self._ended.is_set():
                return
            self._acked = max(self._acked, sent)
            holds = resp.get("holds") if isinstance(resp, dict) else None  # None (204): an older side-car
            now = time.monotonic()
            for hv in holds if isinstance(holds, list) else ():
                if not isinstance(hv, dict):
                    continue
                h = self._holds.get((hv.get("kind"), hv.get("name")))
                v = millis(hv.get("validForMillis"))
                if h is None or token_of(hv.get("token")) != h.token or not v:
                    continue
                until = sent + v / 1000.0
                if h.until is None:
                    # Awaited (an elected event): only a keep-alive sent after the event, with a
                    # validity still to come, confirms it.
                    if sent < h.since or until <= now:
                        continue
                    h.until = until
                    confirmed.append(h)
                elif until > h.until:
                    h.until = until
            self._cv.notify_all()
        if self._on_confirmed is not None:
            for h in confirmed:
                self._on_confirmed(self, h.kind, h.name, h.token)

    def trust(self, kind, name, token, until):
        """Registers a hold trusted until until (time.monotonic()): its grant's validity
        anchored at the time the request was sent. When until passes without a keep-alive
        confirming it again, the session ends."""
        with self._mu:
            self._holds[(kind, name)] = _Hold(kind, name, token, until=until)
            self._watch_locked()

    def await_confirmation(self, kind, name, token, since):
        """Registers a hold that is not trusted yet (an elected event: not anchored in time),
        and asks for a keep-alive at once. A keep-alive sent at since or later that lists it
        confirms it: it is then trusted as a hold of trust(), and on_confirmed is called."""
        with self._mu:
            if self._ended.is_set():
                return
            self._holds[(kind, name)] = _Hold(kind, name, token, since=since)
            self._watch_locked()
        self._wake.set()

    def trusted(self, kind, name, token):
        """Whether the hold is trusted now."""
        with self._mu:
            h = self._holds.get((kind, name))
            return (not self._ended.is_set() and h is not None and h.token == token
                    and h.until is not None and h.until > time.monotonic())

    def forget(self, kind, name):
        """Forgets the validity of a hold that is being given up."""
        with self._mu:
            if self._holds.pop((kind, name), None) is not None:
                self._cv.notify_all()

    def _watch_locked(self):
        """Starts the validity watchdog if it does not run (with _mu held)."""
        self._cv.notify_all()
        if not self._watching:
            self._watching = True
            threading.Thread(target=self._watch, name="metaparticle-sync-validity-" + self.id[:8], daemon=True).start()

    def _watch(self):
        """Ends the session when a trusted hold's validity runs out unconfirmed."""
        with self._mu:
            while True:
                if self._ended.is_set():
                    return
                now = time.monotonic()
                due = [h for h in self._holds.values() if h.until is not None]
                late = [h for h in due if h.until <= now]
                if late:
                    what = late[0].describe()
                    break
                self._cv.wait(min(h.until for h in due) - now if due else None)
        self.end("the side-car did not confirm %s before its validity ran out (it may be paused or cut off, "
                 "and others may take it soon)" % what)

    # ---- requests and the end ----

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
            self._holds.clear()
            self._cv.notify_all()
            conns = list(self._conns)
            notify = notify and not self._closing
        self._wake.set()
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
