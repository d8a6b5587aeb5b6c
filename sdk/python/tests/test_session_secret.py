"""Session secrets: every call on a session carries "Authorization: Bearer <secret>".

A session's ID is public: it is the second half of the holder identity "<pod>/<id>" that anyone
can read from GET /v1/locks/{name}. The side-car therefore returns a secret with each new
session and refuses, with 401 "unauthorized" and without changing anything, a call on the
session that does not carry it. SecretTest checks that against real side-cars, with raw
http.client calls made from outside the client; FakeSidecarTest checks, against a stand-in
side-car that records what it receives, that the client sends the header on every call on a
session (and none when the side-car returns no secret, as one that predates secrets does) and
that the secret stays out of logs, reprs and exception messages.
"""

import http.client
import http.server
import json
import logging
import pickle
import queue
import secrets
import threading
import time
import unittest
import urllib.parse
import uuid

import harness
from harness import PATIENCE

from metaparticle_sync import APIError, Election, Lock, SidecarUnreachable, SyncError
from metaparticle_sync import _http


def raw(address, method, path, body=None, authorization=None):
    """One request made with http.client alone, the way any process in the Pod could make it.
    Returns (status, headers, decoded JSON body or None). The body of a successful events
    request (a stream) is not read."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=PATIENCE)
    try:
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if authorization is not None:
            headers["Authorization"] = authorization
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        streaming = 200 <= resp.status < 300 and path.endswith("/events")
        data = b"" if streaming else resp.read()
        return resp.status, resp.headers, (json.loads(data) if data else None)
    finally:
        conn.close()


def session_calls(sid, lock="", election=""):
    """Every call on session sid: (method, path, body)."""
    s = "/v1/sessions/%s" % sid
    calls = [
        ("POST", s + "/keepalive", None),
        ("GET", s + "/events", None),
        ("PUT", s + "/elections/%s" % (election or "other-election"), None),
        ("POST", s + "/elections/%s/resign" % (election or "other-election"), None),
        ("DELETE", s + "/elections/%s" % (election or "other-election"), None),
        ("POST", s + "/locks/other-lock", {"try": True}),
        ("DELETE", s + "/locks/other-lock", None),
    ]
    if lock:
        calls.append(("DELETE", s + "/locks/%s" % lock, None))
    calls.append(("DELETE", s, None))  # last: it would end the session
    return calls


class SecretTest(harness.SidecarTestCase):
    """Real side-cars: another session's ID without its secret, or with a wrong one, changes
    nothing."""

    def assert_refused(self, address, calls, authorization):
        for method, path, body in calls:
            status, headers, err = raw(address, method, path, body, authorization)
            what = "%s %s with Authorization %r" % (method, path, authorization)
            self.assertEqual(status, 401, "%s: %s" % (what, err))
            self.assertIsInstance(err, dict, what)
            self.assertEqual(err.get("code"), "unauthorized", "%s: %s" % (what, err))
            self.assertTrue((headers.get("WWW-Authenticate") or "").startswith("Bearer"), "%s: %s" % (what, dict(headers)))

    def other_sessions_secret(self, sc):
        """The secret of a session opened (with raw HTTP) by someone else on the same side-car."""
        status, _, opened = raw(sc.address, "POST", "/v1/sessions", {"client": "intruder"})
        self.assertEqual(status, 201, opened)
        self.assertTrue(opened.get("secret"), "the side-car returned no secret: %r" % (opened,))
        auth = "Bearer " + opened["secret"]
        self.addCleanup(raw, sc.address, "DELETE", "/v1/sessions/%s" % opened["id"], None, auth)
        return opened["secret"]

    def wait_for_renewal(self, state_of, before):
        """Waits until the holder has renewed its Lease since state before was read: the side-car
        kept the hold, and enough time passed for any loss to have reached the client."""
        self.eventually(lambda: state_of()["renewTime"] != before["renewTime"], "the holder to renew its Lease")

    def check_lock_survives(self, authorizations):
        sc = self.sidecar("pod-a")
        lost = threading.Event()
        lock = Lock("guarded", base_uri=sc.address, lock_lost_callback=lost.set)
        self.assertTrue(lock.acquire())
        self.addCleanup(lambda: lock.held and lock.release())
        token = lock.token
        before = sc.lock_state("guarded")
        self.assertTrue(before["held"], before)
        self.assertEqual(before["holder"], lock.holder)
        pod, _, sid = before["holder"].partition("/")
        self.assertEqual(pod, "pod-a")
        self.assertTrue(sid, before)

        for authorization in authorizations:
            self.assert_refused(sc.address, session_calls(sid, lock="guarded"), authorization)

        self.wait_for_renewal(lambda: sc.lock_state("guarded"), before)
        after = sc.lock_state("guarded")
        self.assertTrue(after["held"], after)
        self.assertEqual(after["holder"], before["holder"])
        self.assertEqual(after["token"], before["token"])
        self.assertFalse(lost.is_set(), "lock_lost_callback was called: %s" % lock.lost_reason)
        self.assertTrue(lock.held)
        self.assertEqual(lock.token, token)
        self.assertIsNone(lock.lost_reason)
        # Nobody else can take it, and the client's own calls (with the secret) still work.
        self.assertFalse(Lock("guarded", base_uri=sc.address).acquire(blocking=False))
        lock.release()
        self.assertFalse(lost.is_set())
        self.assertFalse(sc.lock_state("guarded")["held"])
        other = Lock("guarded", base_uri=sc.address)
        self.assertTrue(other.acquire(blocking=False))
        self.assertGreater(other.token, token)
        other.release()

    def test_session_id_without_secret_is_refused_and_the_lock_stays_held(self):
        self.check_lock_survives([None, "Bearer", "Bearer ", "Basic " + "x" * 20])

    def test_wrong_secret_is_refused_and_the_lock_stays_held(self):
        self.check_lock_survives(["Bearer " + secrets.token_hex(32), "bearer " + secrets.token_hex(32), "Bearer not-the-secret"])

    def test_another_sessions_secret_is_refused(self):
        sc = self.sidecar("pod-a")
        lost = threading.Event()
        lock = Lock("guarded", base_uri=sc.address, lock_lost_callback=lost.set)
        self.assertTrue(lock.acquire())
        before = sc.lock_state("guarded")
        sid = before["holder"].partition("/")[2]
        self.assert_refused(sc.address, session_calls(sid, lock="guarded"), "Bearer " + self.other_sessions_secret(sc))
        self.wait_for_renewal(lambda: sc.lock_state("guarded"), before)
        self.assertEqual(sc.lock_state("guarded")["holder"], before["holder"])
        self.assertFalse(lost.is_set(), "lock_lost_callback was called: %s" % lock.lost_reason)
        self.assertTrue(lock.held)
        lock.release()
        self.assertFalse(sc.lock_state("guarded")["held"])

    def test_leader_cannot_be_deposed_by_session_id(self):
        a, b = self.sidecar("pod-a"), self.sidecar("pod-b")
        events = queue.Queue()
        leader = Election("guarded", lambda: events.put("master"), lambda: events.put("lost"), base_uri=a.address)
        errors = []
        t = threading.Thread(target=lambda: self._run(leader, errors), daemon=True)
        t.start()
        self.addCleanup(t.join, PATIENCE)
        self.addCleanup(leader.shutdown)
        self.assertEqual(events.get(timeout=PATIENCE), "master")
        token = leader.token
        before = a.election_state("guarded")
        self.assertEqual(before["holder"], leader.leader())
        sid = before["holder"].partition("/")[2]
        for authorization in (None, "Bearer " + secrets.token_hex(32), "Bearer " + self.other_sessions_secret(a)):
            self.assert_refused(a.address, session_calls(sid, election="guarded"), authorization)
        # A candidate in another Pod would lead at once if the leader resigned or left.
        other = Election("guarded", lambda: events.put("other master"), lambda: None, base_uri=b.address)
        t2 = threading.Thread(target=other.run, daemon=True)
        t2.start()
        self.addCleanup(t2.join, PATIENCE)
        self.addCleanup(other.shutdown)

        self.wait_for_renewal(lambda: a.election_state("guarded"), before)
        self.assertEqual(a.election_state("guarded")["holder"], before["holder"])
        self.assertEqual(b.election_state("guarded")["holder"], before["holder"])
        self.assertTrue(events.empty(), "unexpected election callback: %r" % (events.queue,))
        self.assertTrue(leader.is_leader)
        self.assertEqual(leader.token, token)
        leader.shutdown()
        self.assertEqual(events.get(timeout=PATIENCE), "lost")
        self.assertEqual(events.get(timeout=PATIENCE), "other master")
        t.join(PATIENCE)
        self.assertEqual(errors, [])

    @staticmethod
    def _run(election, errors):
        try:
            election.run()
        except BaseException as e:
            errors.append(e)

    def test_client_sends_the_secret_the_side_car_checks(self):
        # The positive raw case: the secret returned at open, sent as Bearer, is accepted.
        sc = self.sidecar("pod-a")
        status, _, opened = raw(sc.address, "POST", "/v1/sessions", {"client": "raw"})
        self.assertEqual(status, 201, opened)
        self.assertTrue(set(opened) >= {"id", "secret", "holder", "ttlMillis"}, opened)
        self.assertNotIn(opened["secret"], opened["holder"])
        auth = "Bearer " + opened["secret"]
        sid = opened["id"]
        status, _, grant = raw(sc.address, "POST", "/v1/sessions/%s/locks/raw" % sid, {"try": True}, auth)
        self.assertEqual(status, 200, grant)
        self.assertEqual(sc.lock_state("raw")["holder"], opened["holder"])
        self.assertNotIn(opened["secret"], json.dumps(sc.lock_state("raw")))
        self.assertEqual(raw(sc.address, "DELETE", "/v1/sessions/%s/locks/raw" % sid, None, auth)[0], 204)
        self.assertEqual(raw(sc.address, "DELETE", "/v1/sessions/%s" % sid, None, auth)[0], 204)
        self.assertFalse(sc.lock_state("raw")["held"])


# ---- a stand-in side-car, to see what the client sends ----

SECRET = "5ecret" + "0123456789abcdef" * 3 + "feedc0de"  # hex-like, unlike anything else on the wire


class FakeSidecar:
    """Speaks enough of version 1 of the API for Lock and Election, checks the secret like the
    real side-car (when it has one), and records (method, path, Authorization) of each request.

    open_response, when set, is the body answered to POST /v1/sessions (bytes or a dict);
    refuse is a set of "keepalive", "locks": calls answered 401 even with the right secret.

    By default it is a side-car older than hold validities: grants and elected events carry no
    validForMillis and keep-alives are answered 204. With validity (milliseconds) it is a
    current one: grants and elected events carry that validity, the open-session response says
    keep_alive_millis, and keep-alives list the session's holds with that validity while
    ``confirming`` is true (an empty list otherwise). lock_delay (seconds) delays each grant,
    like a blocking acquire that waits. ``timeline`` records (time.monotonic(), method, path)
    of each request when it arrives and ("granted", path) when a grant is answered."""

    def __init__(self, test, secret=SECRET, open_response=None, refuse=(), validity=None, keep_alive_millis=None,
                 lock_delay=0.0):
        self.secret = secret
        self.open_response = open_response
        self.refuse = set(refuse)
        self.validity = validity
        self.keep_alive_millis = keep_alive_millis
        self.lock_delay = lock_delay
        self.confirming = True
        self.requests = []
        self.timeline = []
        self.mu = threading.Lock()
        self.sessions = {}  # id -> queue of events to stream; None once closed
        self.holds = {}  # id -> {(kind, name): token}
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.handle(self)

            do_POST = do_PUT = do_DELETE = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = "127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        test.addCleanup(self.stop)

    def stop(self):
        with self.mu:
            for q in self.sessions.values():
                q.put(None)
        self.server.shutdown()
        self.server.server_close()

    def seen(self):
        with self.mu:
            return list(self.requests)

    @staticmethod
    def reply(h, status, body=None, raw_body=None):
        data = raw_body if raw_body is not None else (json.dumps(body).encode() if body is not None else b"")
        try:
            h.send_response(status)
            if status == 401:
                h.send_header("WWW-Authenticate", 'Bearer realm="fake"')
            if data:
                h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except OSError:
            pass  # the client gave up on the request (its session ended under it)

    def handle(self, h):
        n = int(h.headers.get("Content-Length") or 0)
        try:
            sent = json.loads(h.rfile.read(n)) if n else {}
        except ValueError:
            sent = {}
        method, path = h.command, urllib.parse.unquote(h.path)
        auth = h.headers.get("Authorization")
        with self.mu:
            self.requests.append((method, path, auth))
            self.timeline.append((time.monotonic(), method, path))
        parts = path.strip("/").split("/")  # v1 sessions <id> <what> <name> [resign]
        if method == "POST" and parts == ["v1", "sessions"]:
            if self.open_response is not None:
                body = self.open_response
                return self.reply(h, 201, raw_body=body if isinstance(body, bytes) else json.dumps(body).encode())
            sid = uuid.uuid4().hex
            with self.mu:
                self.sessions[sid] = queue.Queue()
            body = {"id": sid, "holder": "fake-pod/" + sid, "ttlMillis": sent.get("ttlMillis") or 10000}
            if self.keep_alive_millis is not None:
                body["keepAliveMillis"] = self.keep_alive_millis
            if self.secret is not None:
                body["secret"] = self.secret
            return self.reply(h, 201, body)
        if len(parts) < 3 or parts[:2] != ["v1", "sessions"]:
            return self.reply(h, 404, {"code": "not_found", "message": "no route"})
        sid, rest = parts[2], parts[3:]
        with self.mu:
            events = self.sessions.get(sid)
        if events is None:
            return self.reply(h, 404, {"code": "no_session", "message": "no session %s" % sid})
        if self.secret is not None and auth != "Bearer " + self.secret:
            return self.reply(h, 401, {"code": "unauthorized", "message": "session %s needs its secret" % sid})
        what = rest[0] if rest else ""
        if what in self.refuse:
            return self.reply(h, 401, {"code": "unauthorized", "message": "refused by the test"})
        if method == "GET" and what == "events":
            return self.stream(h, events)
        if method == "POST" and what == "keepalive":
            if self.validity is None:
                return self.reply(h, 204)
            with self.mu:
                holds = [{"kind": k, "name": n, "token": t, "validForMillis": self.validity}
                         for (k, n), t in sorted(self.holds.get(sid, {}).items())] if self.confirming else []
            return self.reply(h, 200, {"holds": holds})
        if what == "locks" and method == "POST":
            if self.lock_delay:
                threading.Event().wait(self.lock_delay)
            grant = {"name": rest[1], "lease": "l", "token": "7", "holder": "fake-pod/" + sid}
            self.hold(sid, "lock", rest[1], grant)
            with self.mu:
                self.timeline.append((time.monotonic(), "granted", path))
            return self.reply(h, 200, grant)
        if what == "elections" and method == "PUT":
            grant = {"name": rest[1], "lease": "e", "token": "9", "holder": "fake-pod/" + sid}
            self.hold(sid, "election", rest[1], grant)
            events.put({"type": "elected", "kind": "election", "grant": grant})
            return self.reply(h, 204)
        if method == "DELETE" and what in ("locks", "elections"):
            with self.mu:
                self.holds.get(sid, {}).pop((what[:-1], rest[1]), None)
            return self.reply(h, 204)
        if method == "DELETE" and not rest:
            events.put(None)
            return self.reply(h, 204)
        return self.reply(h, 405, {"code": "method_not_allowed", "message": "%s %s" % (method, path)})

    def hold(self, sid, kind, name, grant):
        """Records a hold of session sid, and gives grant the fake's validity, if it has one."""
        with self.mu:
            self.holds.setdefault(sid, {})[(kind, name)] = grant["token"]
        if self.validity is not None:
            grant["validForMillis"] = self.validity

    @staticmethod
    def stream(h, events):
        h.send_response(200)
        h.send_header("Content-Type", "application/x-ndjson")
        h.end_headers()
        try:
            h.wfile.write(b'{"type":"ready"}\n')
            h.wfile.flush()
            while True:
                try:
                    ev = events.get(timeout=0.2)
                except queue.Empty:
                    ev = {"type": "ping"}
                if ev is None:
                    h.wfile.write(b'{"type":"closed","reason":"closed"}\n')
                    h.wfile.flush()
                    return
                h.wfile.write(json.dumps(ev).encode() + b"\n")
                h.wfile.flush()
        except OSError:
            return  # the client closed the stream


class CapturedLogs(logging.Handler):
    """Every record of the metaparticle_sync logger, at every level, while installed."""

    def __init__(self, test):
        super().__init__(logging.DEBUG)
        self.records = []
        self.setFormatter(logging.Formatter("%(message)s"))
        logger = logging.getLogger("metaparticle_sync")
        level = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self)
        test.addCleanup(logger.setLevel, level)
        test.addCleanup(logger.removeHandler, self)

    def emit(self, record):
        self.records.append(self.format(record))

    def text(self):
        return "\n".join(self.records)


class FakeSidecarTest(unittest.TestCase):

    def use_lock_and_election(self, fake):
        """Acquires and releases a Lock (with at least one keep-alive while held), and runs an
        Election that shuts itself down once elected."""
        lock = Lock("fake-lock", base_uri=fake.address, ttl=2, retry_timeout=5)
        self.assertTrue(lock.acquire())
        self.shown = [repr(lock), repr(lock._session), str(lock._session.__dict__)]
        give_up = threading.Event()
        keepalives = lambda: [r for r in fake.seen() if r[0] == "POST" and r[1].endswith("/keepalive")]
        for _ in range(int(PATIENCE / 0.05)):
            if keepalives():
                break
            give_up.wait(0.05)
        self.assertTrue(keepalives(), "no keep-alive was sent")
        self.assertTrue(lock.held)
        lock.release()

        led = []
        election = Election("fake-election", lambda: (led.append(True), election.shutdown()), lambda: led.append(False),
                            base_uri=fake.address, ttl=2, retry_timeout=5)
        t = threading.Thread(target=election.run, daemon=True)
        t.start()
        t.join(PATIENCE)
        self.assertFalse(t.is_alive(), "the election did not end")
        self.assertEqual(led, [True, False])

    def session_requests(self, fake):
        reqs = [r for r in fake.seen() if r[1].startswith("/v1/sessions/")]
        kinds = {(m, p.split("/")[4] if len(p.split("/")) > 4 else "") for m, p, _ in reqs}
        self.assertTrue(kinds >= {("GET", "events"), ("POST", "keepalive"), ("POST", "locks"), ("DELETE", "locks"),
                                  ("PUT", "elections"), ("DELETE", "elections"), ("DELETE", "")}, kinds)
        return reqs

    def test_every_session_call_carries_the_secret(self):
        fake = FakeSidecar(self)
        logs = CapturedLogs(self)
        self.use_lock_and_election(fake)
        opens = [r for r in fake.seen() if r[1] == "/v1/sessions"]
        self.assertEqual(len(opens), 2)
        for r in opens:
            self.assertIsNone(r[2], "opening a session needs no secret: %r" % (r,))
        for r in self.session_requests(fake):
            self.assertEqual(r[2], "Bearer " + SECRET, r[:2])
        # ... and it is shown nowhere else.
        self.assertNotIn(SECRET, logs.text())
        for text in self.shown:
            self.assertNotIn(SECRET, text)

    def test_older_side_car_without_secret_gets_no_header(self):
        fake = FakeSidecar(self, secret=None)
        self.use_lock_and_election(fake)
        for r in fake.seen():
            self.assertIsNone(r[2], "sent an Authorization header to a side-car that gave no secret: %r" % (r[:2],))
        self.session_requests(fake)

    def test_secret_repr_and_pickle(self):
        s = _http.Secret.parse(SECRET)
        self.assertEqual(s.authorization(), "Bearer " + SECRET)
        for text in (repr(s), str(s), "%s %r" % (s, s), repr([s]), repr({"secret": s})):
            self.assertNotIn(SECRET, text)
        with self.assertRaises(TypeError):
            pickle.dumps(s)
        self.assertIsNone(_http.Secret.parse(None))
        self.assertIsNone(_http.Secret.parse(""))

    def assert_hidden(self, err):
        self.assertNotIn(SECRET, str(err))
        self.assertNotIn(SECRET, repr(err))
        self.assertNotIn(SECRET, repr(err.args))

    def test_secret_stays_out_of_errors(self):
        logs = CapturedLogs(self)
        # A malformed open response that carries a secret: quoted in the error, secret redacted.
        fake = FakeSidecar(self, open_response={"id": "abc", "secret": SECRET})
        with self.assertRaises(SyncError) as cm:
            Lock("x", base_uri=fake.address, retry_timeout=0).acquire()
        self.assert_hidden(cm.exception)
        self.assertIn("redacted", str(cm.exception))

        # A secret that is no valid Bearer credential (it would break the header): refused,
        # without being shown.
        bad = SECRET + "\r\nX-Injected: 1"
        fake = FakeSidecar(self, open_response={"id": "abc", "secret": bad, "ttlMillis": 2000, "holder": "p/abc"})
        with self.assertRaises(SyncError) as cm:
            Lock("x", base_uri=fake.address, retry_timeout=0).acquire()
        self.assert_hidden(cm.exception)
        self.assertIn("not a valid Bearer credential", str(cm.exception))
        self.assertFalse(any(r[1] != "/v1/sessions" for r in fake.seen()), fake.seen())

        # A successful open response that is not JSON: not quoted.
        fake = FakeSidecar(self, open_response=('{"id": "abc", "secret": "%s", "ttlMil' % SECRET).encode())
        with self.assertRaises(SidecarUnreachable) as cm:
            Lock("x", base_uri=fake.address, retry_timeout=0.2).acquire()
        self.assert_hidden(cm.exception)
        self.assertIn("not shown", str(cm.exception))

        # The side-car refuses the secret: APIError names the call, not the secret.
        fake = FakeSidecar(self, refuse={"locks"})
        with self.assertRaises(APIError) as cm:
            Lock("x", base_uri=fake.address, retry_timeout=0).acquire()
        self.assertEqual((cm.exception.status, cm.exception.code), (401, "unauthorized"))
        self.assert_hidden(cm.exception)
        self.assertNotIn(SECRET, logs.text())

    def test_refused_keepalive_ends_the_session(self):
        logs = CapturedLogs(self)
        fake = FakeSidecar(self, refuse={"keepalive"})
        lost = threading.Event()
        lock = Lock("x", base_uri=fake.address, ttl=2, lock_lost_callback=lost.set)
        self.assertTrue(lock.acquire())
        self.assertTrue(lost.wait(PATIENCE), "lock_lost_callback was not called")
        self.assertIn("refused the session's secret", lock.lost_reason)
        self.assertNotIn(SECRET, lock.lost_reason)
        lock.release()
        self.assertNotIn(SECRET, logs.text())


if __name__ == "__main__":
    unittest.main()


class DegradedTest(unittest.TestCase):
    """Lock.degraded follows the side-car's degraded and recovered events, and changes no hold."""

    def until(self, cond, what):
        give_up = time.monotonic() + PATIENCE
        while not cond():
            self.assertLess(time.monotonic(), give_up, "timed out waiting for %s" % what)
            time.sleep(0.02)

    def test_degraded_follows_the_events(self):
        fake = FakeSidecar(self)
        lock = Lock("degraded", base_uri=fake.address, ttl=10, retry_timeout=5)
        self.assertIsNone(lock.degraded)
        self.assertTrue(lock.acquire())
        self.assertIsNone(lock.degraded)
        with fake.mu:
            events = fake.sessions[lock._session.id]
        events.put({"type": "degraded", "code": "forbidden", "reason": "RBAC forbids write of leases"})
        self.until(lambda: lock.degraded is not None, "degraded")
        self.assertIsInstance(lock.degraded, APIError)
        self.assertEqual(lock.degraded.code, "forbidden")
        self.assertIn("RBAC forbids", lock.degraded.message)
        self.assertTrue(lock.held)
        events.put({"type": "recovered"})
        self.until(lambda: lock.degraded is None, "recovered")
        self.assertTrue(lock.held)
        lock.release()
