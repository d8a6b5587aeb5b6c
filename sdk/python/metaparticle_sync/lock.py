"""Lock: a named lock shared by every process, in every Pod, that uses the same name."""

import logging
import math
import threading
import time

from . import _http
from ._session import Session, SessionEnded, millis, token_of

log = logging.getLogger("metaparticle_sync")

#: Default session TTL, in seconds: how long the side-car keeps a session whose keep-alives
#: stopped (a process that dies is noticed at once, when its connections close).
DEFAULT_TTL = 10.0

#: Default time, in seconds, for which an unreachable side-car (still starting, restarting) and
#: 503 answers are retried before an error is raised.
DEFAULT_RETRY_TIMEOUT = 30.0

#: The longest acquire timeout the side-car accepts, in seconds (24 h).
MAX_TIMEOUT = 86400.0

_IDLE, _ACQUIRING, _HELD, _LOST, _RELEASING = "idle", "acquiring", "held", "lost", "releasing"


def check_options(name, ttl, retry_timeout):
    if not isinstance(name, str) or not name:
        raise ValueError("the name must be a non-empty string, not %r" % (name,))
    if not 1.0 <= ttl <= 300.0:
        raise ValueError("ttl %r must lie within [1, 300] seconds" % (ttl,))
    if retry_timeout < 0:
        raise ValueError("retry_timeout %r must not be negative" % (retry_timeout,))


class Lock:
    """A distributed lock named ``name``, held through the Metaparticle Sync side-car.

    The interface is threading.Lock's: ``acquire(blocking=True, timeout=-1)`` returns True when
    the lock is held (a blocking call without timeout always does), False when a non-blocking
    call or the timeout found it taken; ``release()`` gives it up; ``with lock:`` does both.
    Other threads of the process that acquire the same Lock object wait for it like they would
    for a threading.Lock; a thread that acquires a Lock it already holds gets RuntimeError
    (locks are not re-entrant). Separate Lock objects of one name exclude each other like
    separate processes do.

    Each hold has a fencing ``token``: an int strictly greater than the token of every earlier
    hold of the name. Pass it to whatever the lock protects, and let that refuse writes with a
    smaller token than it has seen (docs/api.md, "Fencing tokens").

    A hold can end without release(): when the side-car cannot renew the lock, when it goes
    away, when it does not confirm the hold before the validity it gave runs out (it is paused
    or cut off, and another Pod may soon take the lock), or when the session with it breaks.
    Then ``held`` turns False and ``lock_lost_callback()`` is called from a background thread;
    the work the lock protects must stop. Call release() (or leave the ``with`` block)
    afterwards as usual; it only cleans up.

    ``lock_callback()`` is called by acquire(), in the acquiring thread, each time the lock has
    been acquired. ``base_uri`` (``"http://127.0.0.1:13131"`` or ``"127.0.0.1:13131"``)
    overrides $METAPARTICLE_SYNC_ADDR. ``ttl`` is the session TTL and ``retry_timeout`` bounds
    the retries while the side-car cannot be reached, both in seconds.
    """

    def __init__(self, name, base_uri=None, lock_callback=None, lock_lost_callback=None, *,
                 ttl=DEFAULT_TTL, retry_timeout=DEFAULT_RETRY_TIMEOUT):
        check_options(name, ttl, retry_timeout)
        self.name = name
        self.base_uri = base_uri
        self.lock_callback = lock_callback
        self.lock_lost_callback = lock_lost_callback
        self._address = _http.resolve(base_uri)
        self._ttl = float(ttl)
        self._retry_timeout = float(retry_timeout)
        self._latest = None  # the last session opened, for degraded
        self._cond = threading.Condition()
        self._state = _IDLE   # protected by _cond, like every field below
        self._owner = None    # thread ident of the acquiring or holding thread
        self._session = None  # the session of the hold
        self._grant = None    # the side-car's grant: name, lease, token, holder
        self._early_losses = set()  # tokens reported lost while acquiring
        self._lost_reason = None

    # ---- state ----

    @property
    def address(self):
        """The side-car's address as host:port."""
        return self._address.hostport

    @property
    def held(self):
        """True while this Lock holds the lock: acquired, not released, not lost."""
        with self._cond:
            return self._state == _HELD

    def is_held(self):
        """Same as ``held``."""
        return self.held

    def locked(self):
        """Same as ``held`` (threading.Lock's name)."""
        return self.held

    @property
    def token(self):
        """The fencing token (int) of the current hold, or None when not held."""
        with self._cond:
            return int(self._grant["token"]) if self._state == _HELD else None

    @property
    def holder(self):
        """The holder identity of the current hold ("<pod>/<session>"), or None."""
        with self._cond:
            return self._grant.get("holder") if self._state == _HELD else None

    @property
    def degraded(self):
        """The API server trouble the side-car last reported on this Lock's session, as an
        APIError whose ``code`` is ``forbidden`` (RBAC) or ``unavailable``, or None: no trouble,
        or no session open. It changes nothing by itself; every loss it causes is reported as
        always."""
        s = self._latest
        return s.degraded if s is not None and not s.ended else None

    @property
    def lost_reason(self):
        """Why the last hold was lost, or None if it was not."""
        with self._cond:
            return self._lost_reason

    def __repr__(self):
        return "<metaparticle_sync.Lock %r %s at %s>" % (self.name, self._state, self._address.hostport)

    # ---- acquire and release ----

    def acquire(self, blocking=True, timeout=-1):
        """Acquires the lock; see the class documentation. Raises SidecarUnreachable when the
        side-car cannot be reached within the retry timeout, APIError when it refuses."""
        if not blocking and timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking call")
        if timeout != -1 and timeout < 0:
            raise ValueError("timeout value must be a non-negative number")
        if timeout != -1 and timeout > MAX_TIMEOUT:
            raise OverflowError("timeout value is too large: the side-car waits at most %d seconds" % MAX_TIMEOUT)
        deadline = None if (not blocking or timeout == -1) else time.monotonic() + timeout
        me = threading.get_ident()

        # 1. Wait for other threads of this process that use this Lock object.
        with self._cond:
            while True:
                if self._state == _LOST:
                    self._reset()
                if self._state == _IDLE:
                    break
                if self._owner == me and self._state in (_ACQUIRING, _HELD):
                    raise RuntimeError("Lock %r is not re-entrant: this thread already holds it" % self.name)
                remaining = None if deadline is None else deadline - time.monotonic()
                if not blocking or (remaining is not None and remaining <= 0):
                    return False
                self._cond.wait(remaining)
            self._state, self._owner = _ACQUIRING, me
            self._early_losses = set()
            self._lost_reason = None

        # 2. Ask the side-car, on a session of this hold's own.
        ok = False
        try:
            ok = self._take(blocking, deadline)
        finally:
            if not ok:
                with self._cond:
                    self._reset()
        if ok and self.lock_callback is not None:
            self.lock_callback()
        return ok

    def _take(self, blocking, deadline):
        path_name = _http.escape_name(self.name)
        give_up = time.monotonic() + self._retry_timeout
        backoff = 0.05
        while True:
            budget = max(0.0, give_up - time.monotonic())
            if deadline is not None:
                budget = min(budget, max(0.0, deadline - time.monotonic()))
            session = Session.open(self._address, self._ttl, "lock=%s" % self.name, budget, self._on_event, self._on_end)
            self._latest = session
            body, timeout = {}, None
            if not blocking:
                body, timeout = {"try": True}, self._ttl
            elif deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    body, timeout = {"try": True}, self._ttl
                else:
                    body = {"timeoutMillis": max(1, math.ceil(remaining * 1000))}
            sent = time.monotonic()  # the grant's validity is counted from here, not from its arrival
            try:
                grant = session.request("POST", "/v1/sessions/%s/locks/%s" % (session.id, path_name), body, timeout)
            except _http.APIError as e:
                session.close()
                if e.code == "not_acquired":
                    return False
                if e.code not in ("no_session", "unavailable", "shutting_down") or time.monotonic() >= give_up:
                    raise
            except (SessionEnded, _http._Transport) as e:
                # The session broke while waiting (the side-car went away, or stopped): open a
                # new one, giving a side-car that restarts the whole retry timeout to return.
                session.end("the acquire request failed: %s" % _http._describe(e), notify=False)
                log.info("metaparticle_sync: lock %r: the session ended while acquiring (%s); retrying", self.name, _http._describe(e))
                give_up = max(give_up, time.monotonic() + self._retry_timeout)
            else:
                if not self._validate(session, grant, sent):
                    session.end("the grant's validity could not be confirmed", notify=False)
                    log.info("metaparticle_sync: lock %r: the side-car did not confirm the grant's validity; retrying", self.name)
                else:
                    with self._cond:
                        if not session.ended and str(grant.get("token")) not in self._early_losses:
                            self._state, self._session, self._grant = _HELD, session, grant
                            return True
                    session.close()
                    log.info("metaparticle_sync: lock %r was lost as it was granted; retrying", self.name)
            if deadline is not None and time.monotonic() >= deadline:
                return False
            _http.pause_or_stop(min(backoff, max(0.0, give_up - time.monotonic())))
            backoff = min(backoff * 2, 1.0)

    def _validate(self, session, grant, sent):
        """Makes the session watch the validity of a grant answering a request sent at sent,
        and reports False when it cannot be trusted. Counted from sent, the validity is
        trusted if more than half of it is left; otherwise (a blocking acquire that waited long)
        a keep-alive confirms it from now, before the application starts working. A grant
        without a validity (an older side-car) is trusted as before: until a loss is reported."""
        v, token = millis(grant.get("validForMillis")), token_of(grant.get("token"))
        if not v or token is None:
            return True
        if time.monotonic() - sent < v / 2000.0:
            session.trust("lock", self.name, token, sent + v / 1000.0)
            return True
        session.await_confirmation("lock", self.name, token, time.monotonic())
        session.confirm_once(timeout=v / 1000.0)  # an answer slower than a whole validity is of no use
        return session.trusted("lock", self.name, token)

    def release(self):
        """Releases the lock: the side-car hands it to the next waiter at once. Raises
        RuntimeError if this Lock was not acquired. After a loss it only cleans up."""
        with self._cond:
            if self._state not in (_HELD, _LOST):
                raise RuntimeError("release unlocked lock %r" % self.name)
            was_held, session, grant = self._state == _HELD, self._session, self._grant
            self._state = _RELEASING
        session.forget("lock", self.name)  # given up: its validity no longer matters
        try:
            if was_held and not session.ended:
                try:
                    # Naming the token, so that a late DELETE never releases a later hold.
                    path = "/v1/sessions/%s/locks/%s?token=%s" % (session.id, _http.escape_name(self.name), grant.get("token"))
                    session.request("DELETE", path, timeout=max(self._ttl, 15.0))
                except (_http.APIError, _http._Transport, SessionEnded) as e:
                    # Ending the session below releases the lock all the same.
                    log.info("metaparticle_sync: releasing lock %r: %s", self.name, e)
            session.close()
        finally:
            with self._cond:
                self._reset()

    def _reset(self):
        """Back to idle (with _cond held), waking threads that wait for this Lock object."""
        self._state, self._owner, self._session, self._grant = _IDLE, None, None, None
        self._cond.notify_all()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    # ---- losses, reported by the session's threads ----

    def _on_event(self, session, ev):
        if ev.get("type") != "lost" or ev.get("kind") not in (None, "lock"):
            return
        token = str((ev.get("grant") or {}).get("token"))
        reason = ev.get("reason") or "the side-car reported the lock lost"
        with self._cond:
            if self._state == _ACQUIRING:
                self._early_losses.add(token)
                return
            if self._state != _HELD or self._session is not session or str(self._grant.get("token")) != token:
                return
            self._lose(reason)
        session.end("the lock was lost", notify=False)
        self._lost()

    def _on_end(self, session, reason):
        with self._cond:
            if self._state != _HELD or self._session is not session:
                return
            self._lose(reason)
        self._lost()

    def _lose(self, reason):
        self._state, self._lost_reason = _LOST, reason
        self._cond.notify_all()

    def _lost(self):
        log.warning("metaparticle_sync: lock %r lost: %s", self.name, self._lost_reason)
        if self.lock_lost_callback is not None:
            try:
                self.lock_lost_callback()
            except Exception:
                log.exception("metaparticle_sync: the lock_lost_callback of lock %r failed", self.name)
