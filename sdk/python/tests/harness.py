"""Test support for the Python SDK's tests: a real kube-apiserver and etcd, real side-cars.

The control plane is hack/pytest-env (Go, through internal/testenv and envtest): one per test
run, started on first use and stopped at exit. Side-cars are the real cmd/elector binary, run
with --kubeconfig against it, one per simulated Pod, with short lease timings. Both binaries are
built with `go build` into a temporary directory unless $METAPARTICLE_ELECTOR_BIN and
$METAPARTICLE_PYTEST_ENV_BIN name them (`make python-test` builds them into ./bin).

Every process started here gets SIGTERM when the test process dies (PR_SET_PDEATHSIG), and is
stopped by the test's cleanups otherwise; pytest-env stops the control plane when its standard
input closes.
"""

import atexit
import ctypes
import json
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request
import uuid
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SDK = TESTS.parent
REPO = SDK.parent.parent
EXAMPLES = SDK / "examples"

if str(SDK) not in sys.path:
    sys.path.insert(0, str(SDK))

#: Side-car timings: short, so that expiry paths run in seconds.
FAST = ["--lease-duration", "3s", "--renew-deadline", "2s", "--renew-period", "1s", "--retry-period", "200ms"]

#: Upper bound on any wait for something that must happen; reaching it fails the test. It is a
#: bound on failure, not a measurement: nothing asserts how fast anything happens.
PATIENCE = 60.0

_tmp = tempfile.mkdtemp(prefix="mp-python-tests-")
atexit.register(shutil.rmtree, _tmp, True)

# The SDK's warnings (sessions ended, locks lost) go to a file rather than between the test
# results; the tests check the same facts through the API.
_client_log = logging.FileHandler(os.path.join(_tmp, "client.log"), delay=True)
logging.getLogger("metaparticle_sync").addHandler(_client_log)
atexit.register(_client_log.close)


def _die_with_parent():
    """preexec_fn: SIGTERM this child when the test process dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def popen(args, **kw):
    return subprocess.Popen(args, preexec_fn=_die_with_parent, **kw)


# ---- binaries ----

_build_mu = threading.Lock()
_built = {}


def binary(name):
    """Path of the elector or pytest-env binary, built on first use unless given by the
    environment."""
    env = {"elector": "METAPARTICLE_ELECTOR_BIN", "pytest-env": "METAPARTICLE_PYTEST_ENV_BIN"}[name]
    pkg = {"elector": "./cmd/elector", "pytest-env": "./hack/pytest-env"}[name]
    if os.environ.get(env):
        return os.environ[env]
    with _build_mu:
        if name not in _built:
            out = os.path.join(_tmp, name)
            subprocess.run(["go", "build", "-o", out, pkg], cwd=str(REPO), check=True)
            _built[name] = out
        return _built[name]


# ---- control plane ----

class ControlPlane:
    """A running hack/pytest-env: kube-apiserver and etcd, with a kubeconfig for them."""

    def __init__(self):
        self._log = open(os.path.join(_tmp, "pytest-env.log"), "wb")
        self.proc = popen([binary("pytest-env")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=self._log, cwd=str(REPO))
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError("hack/pytest-env did not start the control plane (exit %s): %s" % (
                self.proc.returncode, tail(self._log.name)))
        hello = json.loads(line)
        self.kubeconfig = hello["kubeconfig"]
        self.host = hello["host"]
        self._mu = threading.Lock()

    def namespace(self, prefix):
        """Creates a namespace with a unique name and returns it."""
        name = "%s-%s" % (re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:40], uuid.uuid4().hex[:6])
        with self._mu:
            self.proc.stdin.write(("namespace %s\n" % name).encode())
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline().decode().strip()
        if answer != "ok " + name:
            raise RuntimeError("creating namespace %s: %r" % (name, answer))
        return name

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self._log.close()


_cp = None
_cp_mu = threading.Lock()


def control_plane():
    global _cp
    with _cp_mu:
        if _cp is None:
            _cp = ControlPlane()
            atexit.register(_cp.stop)
        return _cp


# ---- side-cars ----

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, lines=30):
    try:
        with open(path, "rb") as f:
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError as e:
        return "(no log: %s)" % e


class Sidecar:
    """A real side-car (cmd/elector) for one simulated Pod."""

    def __init__(self, namespace, pod):
        self.namespace = namespace
        self.pod = pod
        self.port = free_port()
        self.health_port = free_port()
        self.address = "127.0.0.1:%d" % self.port
        self.log_path = os.path.join(_tmp, "elector-%s-%s-%d.log" % (namespace, pod, self.port))
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        try:
            self.proc = popen([binary("elector"), "--kubeconfig", control_plane().kubeconfig,
                               "--namespace", self.namespace, "--pod-name", self.pod,
                               "--listen", self.address, "--health-listen", "127.0.0.1:%d" % self.health_port] + FAST,
                              stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        give_up = time.monotonic() + PATIENCE
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("side-car %s exited with %s:\n%s" % (self.pod, self.proc.returncode, tail(self.log_path)))
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % self.health_port, timeout=5) as r:
                    if r.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > give_up:
                raise RuntimeError("side-car %s not ready:\n%s" % (self.pod, tail(self.log_path)))
            time.sleep(0.05)

    def kill(self):
        """SIGKILL: the side-car vanishes without releasing anything."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def terminate(self):
        """SIGTERM: the side-car's orderly shutdown."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(PATIENCE)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(PATIENCE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def get(self, path):
        """GETs a path of the lock API and returns the decoded JSON."""
        with urllib.request.urlopen("http://%s%s" % (self.address, path), timeout=10) as r:
            return json.loads(r.read())

    def lock_state(self, name):
        return self.get("/v1/locks/%s" % urllib.request.quote(name, safe=""))

    def election_state(self, name):
        return self.get("/v1/elections/%s" % urllib.request.quote(name, safe=""))

    def metric(self, name, **labels):
        """The value of a metaparticle_sync_<name> sample with the given labels."""
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.health_port, timeout=10) as r:
            text = r.read().decode()
        want = "metaparticle_sync_" + name
        if labels:
            want += "{" + ",".join('%s="%s"' % kv for kv in sorted(labels.items())) + "}"
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0


# ---- Python processes ----

class Proc:
    """A Python subprocess whose output lines are collected by a thread."""

    def __init__(self, args, env, name):
        self.name = name
        self.lines = queue.Queue()
        self.seen = []
        self.proc = popen([sys.executable, "-u"] + args, env=env, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(SDK))
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        with self.proc.stdout:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.seen.append(line)
                self.lines.put(line)
        self.lines.put(None)

    def expect(self, predicate, what, patience=PATIENCE):
        """Returns the next output line that satisfies predicate (a string to equal, or a
        function); fails when the process ends or the patience runs out first."""
        match = (lambda line: line == predicate) if isinstance(predicate, str) else predicate
        give_up = time.monotonic() + patience
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, give_up - time.monotonic()))
            except queue.Empty:
                raise AssertionError("%s: no %s within %gs; output so far:\n%s" % (self.name, what, patience, self.output()))
            if line is None:
                self.lines.put(None)
                raise AssertionError("%s: ended (status %s) before %s; output:\n%s" % (self.name, self.proc.wait(), what, self.output()))
            if match(line):
                return line

    def expect_json(self, key, value, what):
        line = self.expect(lambda l: l.startswith("{") and json.loads(l).get(key) == value, what)
        return json.loads(line)

    def pending(self):
        """Output lines not consumed by expect yet."""
        out = []
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return out
            if line is None:
                self.lines.put(None)
                return out
            out.append(line)

    def send(self, line):
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def wait(self, patience=PATIENCE):
        return self.proc.wait(patience)

    def output(self):
        return "\n".join(self.seen[-40:])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        try:
            self.proc.stdin.close()
        except OSError:
            pass


class SidecarTestCase(unittest.TestCase):
    """Base of the tests that need side-cars: a fresh namespace per test."""

    def setUp(self):
        self.cp = control_plane()
        self.ns = self.cp.namespace(self.id().rsplit(".", 1)[-1].replace("_", "-"))

    def sidecar(self, pod):
        sc = Sidecar(self.ns, pod)
        self.addCleanup(sc.stop)
        return sc.start()

    def python(self, args, sidecar=None, name=None, env=None):
        """Starts python3 -u args, with the SDK on its path and METAPARTICLE_SYNC_ADDR pointing
        at sidecar."""
        e = dict(os.environ)
        e["PYTHONPATH"] = str(SDK) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
        e["PYTHONUNBUFFERED"] = "1"
        if sidecar is not None:
            e["METAPARTICLE_SYNC_ADDR"] = sidecar.address
        e.update(env or {})
        p = Proc([str(a) for a in args], e, name or " ".join(str(a) for a in args))
        self.addCleanup(p.kill)
        return p

    def eventually(self, cond, what, patience=PATIENCE):
        """Polls cond until it is true; fails after patience seconds."""
        give_up = time.monotonic() + patience
        while not cond():
            if time.monotonic() > give_up:
                self.fail("timed out waiting for %s" % what)
            time.sleep(0.02)


class RunningElection:
    """An Election whose run() goes on a thread of its own until the test ends; what run()
    raised is in ``error``. Tests' candidates build on it."""

    def __init__(self, test, election):
        self.election = election
        self.error = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        test.addCleanup(self.stop)

    def _run(self):
        try:
            self.election.run()
        except BaseException as e:
            self.error.append(e)

    def stop(self):
        self.election.shutdown()
        self.thread.join(PATIENCE)
