"""Election: leader election among every process, in every Pod, that stands for the same name."""

import logging
import queue
import threading
import time

from . import _http
from ._session import Session, SessionEnded, millis, token_of
from .lock import DEFAULT_RETRY_TIMEOUT, DEFAULT_TTL, check_options

log = logging.getLogger("metaparticle_sync")


class _Term:
    """One term of leadership of this process."""

    __slots__ = ("token", "called")

    def __init__(self, token):
        self.token = token
        self.called = threading.Event()  # master_fn has been called


class Election:
    """Leader election for ``name`` through the Metaparticle Sync side-car.

    ``run()`` stands as a candidate and blocks until ``shutdown()`` is called. When this process
    is elected it calls ``master_fn()``; when it stops leading (the side-car could not renew its
    leadership, the side-car went away, the session broke) it calls ``lost_master_fn()`` and
    keeps standing, so it can lead again. A leadership the side-car does not confirm before the
    validity it gave runs out (the side-car is paused or cut off, and another candidate may soon
    be elected) is lost too: the session ends, and run() stands again on a new one. Leadership
    reported by the side-car starts (master_fn) once a keep-alive sent after the report
    confirms it. If run() returns or raises while this process leads, lost_master_fn() is
    called first.

    Each term's ``master_fn()`` runs on a daemon thread of its own,
    "metaparticle-sync-leader-<name>", so it may do the leader's work itself and return when
    the term is over, or start the work elsewhere and return at once; its returning does not
    end the term. run()'s thread only dispatches the side-car's events, so a loss is reported
    at once whatever master_fn is doing: ``is_leader`` turns False and ``token`` None, and
    ``lost_master_fn()`` is called on run()'s thread, while that term's master_fn may still
    run. lost_master_fn is the signal to stop the leader's work; it should return promptly,
    for run() handles no event until it has. Inside master_fn, ``is_leader`` is True exactly
    while its own term lasts, so ``while election.is_leader: ...`` is a way to do the work.

    Order: lost_master_fn() of a term is called only after that term's master_fn() has been
    called, and once per term. A new term's master_fn() is not started before the previous
    term's master_fn() has returned, so two never run at once; until then the new term has not
    begun (is_leader stays False, a warning is logged), and if it ends first, neither of its
    callbacks is called. An exception from master_fn() is logged (logger "metaparticle_sync")
    and ends neither the term nor run(). An exception from lost_master_fn() propagates out of
    run(), which leaves the election first; is_leader is already False by then. run() does not
    wait for a master_fn() that is still running when it returns.

    ``leader()`` returns the current leader's identity ("<pod>/<session>") or None; ``is_leader``
    and ``token`` (the fencing token of the current term, an int) describe this process.

    run() raises SidecarUnreachable when the side-car cannot be reached for ``retry_timeout``
    seconds (at start, or after it went away), and APIError when it refuses the election.
    ``base_uri`` and ``ttl`` are as for Lock.
    """

    def __init__(self, name, master_fn, lost_master_fn, base_uri=None, *,
                 ttl=DEFAULT_TTL, retry_timeout=DEFAULT_RETRY_TIMEOUT):
        check_options(name, ttl, retry_timeout)
        self.name = name
        self.base_uri = base_uri
        self.master_fn = master_fn
        self.lost_master_fn = lost_master_fn
        self._address = _http.resolve(base_uri)
        self._ttl = float(ttl)
        self._retry_timeout = float(retry_timeout)
        self._latest = None  # the last session opened, for degraded
        self._mu = threading.Lock()  # protects the fields below
        self._running = False
        self._stop = threading.Event()
        self._queue = queue.Queue()
        self._leading = False  # a term has begun (its master_fn was started) and not ended
        self._token = None
        self._term = None  # the _Term that _leading describes
        self._busy = None  # the _Term whose master_fn has not returned, of this or an earlier term

    @property
    def address(self):
        """The side-car's address as host:port."""
        return self._address.hostport

    @property
    def is_leader(self):
        """True from when a term's master_fn() is started until its loss: lost_master_fn() is
        called just after it turns False."""
        with self._mu:
            return self._leading

    @property
    def token(self):
        """The fencing token (int) of this process's current term, or None when not leading."""
        with self._mu:
            return self._token if self._leading else None

    @property
    def degraded(self):
        """The API server trouble the side-car last reported on this Election's session, as an
        APIError whose ``code`` is ``forbidden`` (RBAC) or ``unavailable``, or None: no trouble,
        or no session open. It changes nothing by itself; every loss it causes is reported as
        always."""
        s = self._latest
        return s.degraded if s is not None and not s.ended else None

    def __repr__(self):
        return "<metaparticle_sync.Election %r %s at %s>" % (
            self.name, "leading" if self._leading else "standing" if self._running else "idle", self._address.hostport)

    def leader(self):
        """The identity of the current leader, as the side-car sees it, or None."""
        st = _http.call_with_retry(self._address, "GET", "/v1/elections/%s" % _http.escape_name(self.name),
                                   timeout=self._ttl, retry_timeout=self._retry_timeout)
        return st.get("holder") if st.get("held") else None

    def shutdown(self):
        """Ends run(): it stops standing, leaves the election (calling lost_master_fn() first if
        this process leads) and returns. Called before run(), it makes the next run() return at
        once. Safe to call from any thread or a callback."""
        with self._mu:
            stop, events = self._stop, self._queue
        stop.set()
        events.put(("stop", None, None))

    def run(self):
        """Stands as a candidate until shutdown(); see the class documentation."""
        with self._mu:
            if self._running:
                raise RuntimeError("Election %r is already running" % self.name)
            self._running = True
            stop, events = self._stop, self._queue
        session = None
        try:
            while not stop.is_set():
                session = self._stand(stop)
                if session is None:
                    break
                if not self._follow(session, events):
                    break
                session = None
        finally:
            try:
                self._step_down()
            finally:
                if session is not None:
                    self._leave(session)
                with self._mu:
                    # Ready for another run(); a shutdown() from now on ends that one.
                    self._running = False
                    self._stop, self._queue = threading.Event(), queue.Queue()

    def _stand(self, stop):
        """Opens a session and stands in it; None when shutdown() came first."""
        path = "/v1/sessions/%%s/elections/%s" % _http.escape_name(self.name)
        while not stop.is_set():
            try:
                session = Session.open(self._address, self._ttl, "election=%s" % self.name, self._retry_timeout,
                                       self._on_event, self._on_end, stop=stop, on_confirmed=self._on_confirmed)
                self._latest = session
            except _http.StopRequested:
                return None
            try:
                session.request("PUT", path % session.id, timeout=self._ttl)
                return session
            except _http.APIError as e:
                session.close()
                if e.status != 503 and e.code != "no_session":
                    raise
            except (SessionEnded, _http._Transport) as e:
                session.end("standing failed: %s" % _http._describe(e), notify=False)
            _http.pause_or_stop(0.2, stop)
        return None

    def _follow(self, session, events):
        """Dispatches the session's events until it ends (True: stand again) or shutdown()
        (False)."""
        pending = None  # the token of an elected event that no keep-alive has confirmed yet
        waiting = None  # (token,): a confirmed term that waits for the last master_fn to return
        while True:
            kind, s, payload = events.get()
            if kind == "stop":
                return False
            if kind == "returned":  # from a leader thread, of any session
                if waiting is not None and self._start(waiting[0]):
                    waiting = None
                continue
            if s is not session:
                continue  # from an earlier session
            if kind == "elected":
                grant = payload.get("grant") or {}
                token = token_of(grant.get("token"))
                if millis(grant.get("validForMillis")) and token is not None:
                    # An event is not anchored in time: it may have waited in a paused side-car.
                    # The term starts when a keep-alive sent after it confirms it ("confirmed").
                    with self._mu:
                        same = self._leading and self._token == token
                    if not same and waiting != (token,):
                        self._step_down()  # a new term replaces the one this process led, if any
                        waiting = None
                        pending = token
                    continue
                waiting = self._begin(int(grant["token"]) if grant.get("token") else None)  # an older side-car
            elif kind == "confirmed":
                if pending is not None and payload == pending:
                    pending = None
                    waiting = self._begin(payload)
            elif kind == "deposed":
                token = token_of((payload.get("grant") or {}).get("token"))
                if pending is not None and (token is None or token >= pending):
                    pending = None
                if waiting is not None and (token is None or waiting[0] is None or token >= waiting[0]):
                    waiting = None  # it ends before it began: neither callback is called
                self._step_down()
            elif kind == "ended":
                self._step_down()
                return True

    def _begin(self, token):
        """Begins the term of a confirmed leadership. Returns None, or (token,) when the previous
        term's master_fn has not returned yet: the caller starts it on the "returned" event."""
        if self._start(token):
            return None
        log.warning("metaparticle_sync: election %r: elected (term %s) while the master_fn of the previous term is "
                    "still running; this term's master_fn starts when it returns", self.name, token)
        return (token,)

    def _start(self, token):
        """Starts a term: is_leader and token, then master_fn on a leader thread. False, and
        nothing done, while an earlier master_fn has not returned."""
        with self._mu:
            if self._leading:
                self._token = token  # an older side-car elected this process again in its term
                return True
            if self._busy is not None:
                return False
            term = _Term(token)
            self._leading, self._token, self._term, self._busy = True, token, term, term
        t = threading.Thread(target=self._master, args=(term,), name="metaparticle-sync-leader-%s" % self.name,
                             daemon=True)
        try:
            t.start()
        except BaseException:
            with self._mu:
                self._leading, self._token, self._term, self._busy = False, None, None, None
            raise
        return True

    def _master(self, term):
        """The leader thread of a term: calls master_fn, then tells the dispatcher it returned."""
        term.called.set()
        try:
            self.master_fn()
        except Exception:
            log.exception("metaparticle_sync: the master_fn of election %r (term %s) failed", self.name, term.token)
        finally:
            with self._mu:
                if self._busy is term:
                    self._busy = None
                events = self._queue  # that of the run() going on now, if it is not the one that started it
            events.put(("returned", None, term))

    def _leave(self, session):
        """Leaves the election, so that the side-car hands leadership over before answering,
        then ends the session (which would leave it all the same)."""
        if not session.ended:
            try:
                session.request("DELETE", "/v1/sessions/%s/elections/%s" % (session.id, _http.escape_name(self.name)),
                                timeout=max(self._ttl, 15.0))
            except (_http.APIError, _http._Transport, SessionEnded) as e:
                log.info("metaparticle_sync: leaving election %r: %s", self.name, e)
        session.close()

    def _step_down(self):
        """Ends the term this process leads, if any: is_leader False at once, then
        lost_master_fn, whether or not the term's master_fn has returned."""
        with self._mu:
            term = self._term
            self._leading, self._token, self._term = False, None, None
        if term is not None:
            term.called.wait()  # the leader thread was started: only its first line is awaited
            self.lost_master_fn()

    def _on_event(self, session, ev):
        grant = ev.get("grant") or {}
        if ev.get("kind") == "election" and grant.get("name") == self.name:
            received = time.monotonic()
            self._queue.put((ev.get("type"), session, ev))
            token = token_of(grant.get("token"))
            if ev.get("type") == "elected" and millis(grant.get("validForMillis")) and token is not None:
                # After the event is queued, so that its confirmation follows it.
                session.await_confirmation("election", self.name, token, received)

    def _on_confirmed(self, session, kind, name, token):
        if kind == "election" and name == self.name:
            self._queue.put(("confirmed", session, token))

    def _on_end(self, session, reason):
        self._queue.put(("ended", session, reason))
