"""HTTP plumbing shared by Lock and Election: where the side-car is, one request, retries.

Only the standard library is used (http.client, json). Every request uses a connection of its
own: the side-car is on loopback, so connections are cheap, and a connection that hangs or breaks
affects one request only.
"""

import http.client
import json
import os
import random
import re
import socket
import threading
import time
import urllib.parse

#: Environment variable that tells an application where its side-car listens, as host:port.
#: The injector sets it in every container of an annotated Pod.
ENV_ADDRESS = "METAPARTICLE_SYNC_ADDR"

#: Where the side-car listens when ENV_ADDRESS is unset: the original elector's port, on loopback.
DEFAULT_ADDRESS = "127.0.0.1:13131"

#: The annotation that makes the injector add the side-car to a Pod.
ANNOTATION = 'metaparticle.io/sync: "true"'

_MAX_BACKOFF = 1.0
_FIRST_BACKOFF = 0.05


class SyncError(Exception):
    """Base class of the errors raised by metaparticle_sync."""


class SidecarUnreachable(SyncError):
    """No connection to the side-car could be made (or it broke) within the retry timeout.

    ``address`` is the host:port tried and ``source`` where that address came from.
    """

    def __init__(self, address, cause, gave_up_after=None):
        self.address = address.hostport
        self.source = address.source
        self.cause = cause
        msg = "cannot reach the Metaparticle Sync side-car at %s (%s): %s" % (
            address.hostport, address.source, _describe(cause))
        if gave_up_after is not None:
            msg += " (gave up after retrying for %gs)" % gave_up_after
        msg += "; is the side-car running, and does the Pod carry the annotation %s?" % ANNOTATION
        super().__init__(msg)


class APIError(SyncError):
    """The side-car answered with an error (docs/api.md, "Errors").

    ``status`` is the HTTP status, ``code`` the side-car's stable error code (for example
    ``not_acquired``, ``no_session``, ``unavailable``) and ``message`` its explanation.
    """

    def __init__(self, method, path, status, code, message, address=None):
        self.method = method
        self.path = path
        self.status = status
        self.code = code
        self.message = message
        where = " (side-car at %s)" % address.hostport if address is not None else ""
        super().__init__("%s %s: %d %s: %s%s" % (method, path, status, code, message, where))


class _Transport(Exception):
    """A request failed below HTTP: refused, reset, timed out, or an unreadable response."""

    def __init__(self, cause):
        super().__init__(_describe(cause))
        self.cause = cause


def _describe(err):
    if isinstance(err, _Transport):
        err = err.cause
    text = str(err)
    name = type(err).__name__
    return "%s: %s" % (name, text) if text else name


class Address:
    """A side-car address: host, port, and where it came from (for error messages)."""

    def __init__(self, host, port, source):
        self.host = host
        self.port = port
        self.source = source

    @property
    def hostport(self):
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s:%d" % (host, self.port)

    def __repr__(self):
        return "Address(%r, %d, %r)" % (self.host, self.port, self.source)


def resolve(base_uri=None):
    """Returns the side-car's Address: base_uri if given ("http://host:port" as in the original
    SDK, or "host:port"), else $METAPARTICLE_SYNC_ADDR, else 127.0.0.1:13131."""
    if base_uri:
        return _parse(base_uri, "base_uri %r" % base_uri)
    env = os.environ.get(ENV_ADDRESS, "").strip()
    if env:
        return _parse(env, "from $%s" % ENV_ADDRESS)
    return _parse(DEFAULT_ADDRESS, "the default address; $%s is not set" % ENV_ADDRESS)


def _parse(text, source):
    url = text if "://" in text else "http://" + text
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        raise ValueError("side-car address %s: only http:// is served (the API listens on loopback)" % source)
    if not parts.hostname:
        raise ValueError("side-car address %s has no host" % source)
    try:
        port = parts.port
    except ValueError as e:
        raise ValueError("side-car address %s: %s" % (source, e)) from None
    if port is None:
        port = int(DEFAULT_ADDRESS.rsplit(":", 1)[1])
    return Address(parts.hostname, port, source)


#: The header that carries a session's secret on every call on the session, as "Bearer <secret>".
HEADER_AUTHORIZATION = "Authorization"

# RFC 9110's token68: what a Bearer credential may be made of (the side-car sends hex).
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class Secret:
    """A session's secret, as the side-car returned it when the session was opened. Calls on the
    session send it as ``Authorization: Bearer <secret>``; it is shown nowhere else: its repr and
    str are redacted, so that it stays out of logs, reprs and exception messages."""

    __slots__ = ("_value",)

    def __init__(self, value):
        self._value = value

    @classmethod
    def parse(cls, value):
        """Returns the Secret of an open-session response's "secret" field, or None when the
        side-car sent none (a side-car older than session secrets, which checks none). Raises
        ValueError, without the value, when the field is not a valid Bearer credential."""
        if value is None or value == "":
            return None
        if not isinstance(value, str) or not _TOKEN68.fullmatch(value):
            raise ValueError("the session secret is not a valid Bearer credential (%s, %d characters; not shown)" % (
                type(value).__name__, len(value) if isinstance(value, str) else 0))
        return cls(value)

    def authorization(self):
        """The value of the Authorization header."""
        return "Bearer " + self._value

    def __repr__(self):
        return "<session secret: redacted>"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a session secret cannot be pickled")


def redacted(data):
    """data (a decoded response) with a "secret" field replaced, for messages."""
    if isinstance(data, dict) and "secret" in data:
        data = dict(data, secret="<redacted>")
    return data


def escape_name(name):
    """Escapes a lock or election name as one path segment, like the Go wire.EscapeName."""
    if name in (".", ".."):
        return name.replace(".", "%2E")
    return urllib.parse.quote(name, safe="")


class Connection:
    """One HTTP exchange on a connection of its own. ``abort`` (from any thread) makes a
    request in progress fail at once, which is how a session that ends unblocks its requests."""

    def __init__(self, address, timeout):
        self._conn = http.client.HTTPConnection(address.host, address.port, timeout=timeout)
        self._sock = None
        self._mu = threading.Lock()
        self._aborted = False

    def request(self, method, path, body=None, secret=None):
        """Sends a request and returns the http.client.HTTPResponse (not yet read). A Secret
        is sent in the Authorization header; None sends none."""
        headers = {"Accept": "application/json"}
        if secret is not None:
            headers[HEADER_AUTHORIZATION] = secret.authorization()
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            self._conn.connect()
            with self._mu:
                self._sock = self._conn.sock
                aborted = self._aborted
            if aborted:
                raise ConnectionAbortedError("the session ended")
            self._conn.request(method, path, body=payload, headers=headers)
            return self._conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise _Transport(e) from e

    def abort(self):
        with self._mu:
            self._aborted = True
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        try:
            self._conn.close()
        except OSError:
            pass


def call(address, method, path, body=None, timeout=None, conn_hook=None, secret=None, sensitive=False):
    """Makes one request and returns its decoded JSON body (None for 204). Raises APIError for
    an error status and _Transport when no response could be read. secret (a Secret) is sent
    in the Authorization header; sensitive keeps the body of a successful response (which
    carries a secret) out of error messages."""
    conn = Connection(address, timeout)
    if conn_hook is not None:
        conn_hook(conn)
    try:
        resp = conn.request(method, path, body, secret)
        try:
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise _Transport(e) from e
    finally:
        if conn_hook is not None:
            conn_hook(None)
        conn.close()
    return decode(address, method, path, resp.status, data, sensitive)


def decode(address, method, path, status, data, sensitive=False):
    """Decodes a response body, or raises APIError for a non-2xx status. With sensitive, a
    malformed successful response is not quoted in the error."""
    parsed = None
    if data:
        try:
            parsed = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            parsed = None
    if 200 <= status < 300:
        if data and not isinstance(parsed, dict):
            shown = ("of %d bytes, not shown" % len(data)) if sensitive else repr(data[:120])
            raise _Transport(ValueError("malformed response %s (is the side-car on this address?)" % shown))
        return parsed
    if isinstance(parsed, dict) and isinstance(parsed.get("code"), str):
        raise APIError(method, path, status, parsed["code"], str(parsed.get("message", "")), address)
    code = http.client.responses.get(status, "unknown").lower().replace(" ", "_")
    raise APIError(method, path, status, code, "response is not a side-car error body: %r" % data[:120], address)


def call_with_retry(address, method, path, body=None, timeout=None, retry_timeout=30.0, stop=None, sensitive=False):
    """call, retrying transport failures and 503 answers (a side-car that is starting, stopping,
    or waiting for the API server) with exponential back-off and jitter, for up to
    retry_timeout seconds. Raises SidecarUnreachable when the side-car cannot be reached, the
    last APIError when it keeps refusing, and StopRequested when stop (a threading.Event) is set."""
    give_up = time.monotonic() + retry_timeout
    backoff = _FIRST_BACKOFF
    while True:
        try:
            return call(address, method, path, body, timeout, sensitive=sensitive)
        except _Transport as e:
            last = e
            if time.monotonic() >= give_up:
                raise SidecarUnreachable(address, e, retry_timeout if retry_timeout > 0 else None) from None
        except APIError as e:
            if e.status != 503 or time.monotonic() >= give_up:
                raise
            last = e
        pause = min(backoff, max(0.0, give_up - time.monotonic())) * (0.5 + random.random() / 2)
        backoff = min(backoff * 2, _MAX_BACKOFF)
        if pause_or_stop(pause, stop):
            raise StopRequested(last)


class StopRequested(Exception):
    """Internal: a retry loop was interrupted by shutdown()."""


def pause_or_stop(seconds, stop=None):
    """Waits for seconds (never with time.sleep, which applications may patch); returns True if
    stop was set."""
    ev = stop if stop is not None else threading.Event()
    return ev.wait(max(0.0, seconds))
