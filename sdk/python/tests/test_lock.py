"""Lock against real side-cars on a real API server."""

import os
import signal
import threading
import unittest
from unittest import mock

import harness
from harness import PATIENCE

import metaparticle_sync
from metaparticle_sync import Lock, SidecarUnreachable


class LockTest(harness.SidecarTestCase):

    def worker(self, sidecar, name, lock="contended"):
        w = self.python([harness.TESTS / "lockworker.py", lock], sidecar=sidecar, name=name)
        w.expect_json("ready", True, "ready")
        return w

    def test_two_processes_contend_and_hand_over_on_release(self):
        a, b = self.sidecar("pod-a"), self.sidecar("pod-b")
        w1, w2 = self.worker(a, "worker 1 (pod A)"), self.worker(b, "worker 2 (pod B)")

        w1.send("acquire")
        w1.expect_json("event", "acquired", "the lock_callback")
        got1 = w1.expect_json("reply", "acquire", "worker 1's acquire")
        self.assertTrue(got1["ok"] and got1["held"], got1)
        self.assertIsInstance(got1["token"], int)
        self.assertTrue(got1["holder"].startswith("pod-a/"), got1)

        w2.send("try")
        tried = w2.expect_json("reply", "try", "worker 2's try")
        self.assertEqual((tried["ok"], tried["held"], tried["token"]), (False, False, None), tried)

        # Worker 2 waits: its side-car counts it as a waiter, and it has not been answered.
        w2.send("acquire")
        self.eventually(lambda: b.metric("waiting", kind="lock") == 1, "worker 2 to wait in pod B's side-car")
        self.assertEqual(w2.pending(), [])
        self.assertEqual(b.lock_state("contended")["holder"], got1["holder"])

        # Release hands over.
        w1.send("release")
        released = w1.expect_json("reply", "release", "worker 1's release")
        self.assertEqual((released["held"], released["token"]), (False, None), released)
        got2 = w2.expect_json("reply", "acquire", "worker 2's acquire after the release")
        self.assertTrue(got2["ok"] and got2["holder"].startswith("pod-b/"), got2)
        self.assertGreater(got2["token"], got1["token"], "fencing tokens must increase")

        w1.send("try")
        self.assertFalse(w1.expect_json("reply", "try", "worker 1's try")["ok"])
        w2.send("release")
        w2.expect_json("reply", "release", "worker 2's release")
        w1.send("try")
        self.assertTrue(w1.expect_json("reply", "try", "worker 1's try after worker 2's release")["ok"])

    def test_two_processes_of_one_pod_exclude_each_other(self):
        a = self.sidecar("pod-a")
        w1, w2 = self.worker(a, "worker 1"), self.worker(a, "worker 2")
        w1.send("acquire")
        got1 = w1.expect_json("reply", "acquire", "worker 1's acquire")
        w2.send("timeout 0.2")
        self.assertFalse(w2.expect_json("reply", "timeout", "worker 2's timed acquire")["ok"])
        w2.send("acquire")
        self.eventually(lambda: a.metric("waiting", kind="lock") == 1, "worker 2 to wait")
        w1.send("release")
        got2 = w2.expect_json("reply", "acquire", "worker 2's acquire")
        self.assertNotEqual(got1["holder"], got2["holder"])
        self.assertGreater(got2["token"], got1["token"])

    def test_process_death_releases_its_lock(self):
        a, b = self.sidecar("pod-a"), self.sidecar("pod-b")
        w1, w2 = self.worker(a, "worker 1"), self.worker(b, "worker 2")
        w1.send("acquire")
        w1.expect_json("reply", "acquire", "worker 1's acquire")
        w2.send("acquire")
        self.eventually(lambda: b.metric("waiting", kind="lock") == 1, "worker 2 to wait")
        w1.kill()  # SIGKILL: no release; its side-car sees the event stream close
        got = w2.expect_json("reply", "acquire", "worker 2's acquire after worker 1 died")
        self.assertTrue(got["ok"], got)

    def test_loss_is_reported_when_the_side_car_is_killed(self):
        a, b = self.sidecar("pod-a"), self.sidecar("pod-b")
        lost = threading.Event()
        lock = Lock("fragile", base_uri="http://" + a.address, lock_lost_callback=lost.set, retry_timeout=0.5)
        self.assertTrue(lock.acquire())
        self.assertTrue(lock.held)
        token = lock.token

        a.kill()
        self.assertTrue(lost.wait(PATIENCE), "lock_lost_callback was not called")
        self.assertFalse(lock.held)
        self.assertFalse(lock.is_held())
        self.assertIsNone(lock.token)
        self.assertTrue(lock.lost_reason)
        lock.release()  # after a loss, release only cleans up

        # The side-car is gone: the error names the address and asks about the annotation.
        with self.assertRaises(SidecarUnreachable) as cm:
            lock.acquire()
        msg = str(cm.exception)
        self.assertIn(a.address, msg)
        self.assertIn('metaparticle.io/sync: "true"', msg)
        self.assertFalse(lock.held)

        # Another Pod takes the lock once the dead side-car's Lease expires.
        other = Lock("fragile", base_uri=b.address)
        self.assertTrue(other.acquire(timeout=PATIENCE))
        self.assertGreater(other.token, token)
        other.release()

    def test_loss_is_reported_when_the_side_car_stops(self):
        a, b = self.sidecar("pod-a"), self.sidecar("pod-b")
        lost = threading.Event()
        lock = Lock("rolling", base_uri=a.address, lock_lost_callback=lost.set)
        with lock:
            waiter = Lock("rolling", base_uri=b.address)
            got = []
            t = threading.Thread(target=lambda: got.append(waiter.acquire()))
            t.start()
            self.eventually(lambda: b.metric("waiting", kind="lock") == 1, "the waiter to wait")
            a.terminate()  # SIGTERM: every hold is released, every client told
            self.assertTrue(lost.wait(PATIENCE), "lock_lost_callback was not called")
            self.assertFalse(lock.held)
            t.join(PATIENCE)
            self.assertEqual(got, [True])
            self.assertTrue(waiter.held)
        waiter.release()

    def test_loss_is_reported_when_the_side_car_freezes(self):
        # A side-car that is alive but stuck (SIGSTOP) sends no pings, acknowledges no
        # keep-alives and confirms no hold: the client gives up after three quarters of its
        # session TTL, or sooner when the hold's validity runs out (test_validity.py covers a TTL
        # long enough that only the validity can tell in time).
        a = self.sidecar("pod-a")
        lost = threading.Event()
        lock = Lock("frozen", base_uri=a.address, lock_lost_callback=lost.set, ttl=2)
        self.assertTrue(lock.acquire())
        os.kill(a.proc.pid, signal.SIGSTOP)
        self.addCleanup(os.kill, a.proc.pid, signal.SIGCONT)
        self.assertTrue(lost.wait(PATIENCE), "lock_lost_callback was not called")
        self.assertFalse(lock.held)
        self.assertTrue("2s" in lock.lost_reason or "validity" in lock.lost_reason, lock.lost_reason)
        os.kill(a.proc.pid, signal.SIGCONT)
        lock.release()

    def test_threading_lock_semantics(self):
        a = self.sidecar("pod-a")
        acquired = []
        lock = Lock("semantics", base_uri=a.address, lock_callback=lambda: acquired.append(True))
        other = Lock("semantics", base_uri=a.address)

        with self.assertRaises(RuntimeError):
            lock.release()  # never acquired
        with self.assertRaises(ValueError):
            lock.acquire(False, 1)
        with self.assertRaises(ValueError):
            lock.acquire(timeout=-2)

        with lock as entered:
            self.assertIs(entered, lock)
            self.assertTrue(lock.held and lock.locked())
            self.assertEqual(acquired, [True])
            self.assertIsInstance(lock.token, int)
            self.assertTrue(lock.holder.startswith("pod-a/"))
            self.assertEqual(a.lock_state("semantics")["holder"], lock.holder)
            with self.assertRaises(RuntimeError):
                lock.acquire()  # not re-entrant
            self.assertFalse(other.acquire(blocking=False))
            self.assertFalse(other.acquire(timeout=0.1))
            self.assertFalse(other.held)

            # Another thread using the same Lock object waits for it, like with threading.Lock.
            got = []
            t = threading.Thread(target=lambda: got.append(lock.acquire(timeout=PATIENCE)))
            t.start()
        t.join(PATIENCE)
        self.assertEqual(got, [True])
        self.assertTrue(lock.held)
        lock.release()
        self.assertFalse(lock.held)
        self.assertIsNone(lock.token)
        self.assertTrue(other.acquire(blocking=False))
        other.release()
        with self.assertRaises(RuntimeError):
            other.release()


class AddressTest(unittest.TestCase):
    """Where the client looks for the side-car, and what it says when nothing is there."""

    def test_unreachable_side_car_error_names_address_and_annotation(self):
        port = harness.free_port()
        lock = Lock("nowhere", base_uri="http://127.0.0.1:%d" % port, retry_timeout=0.3)
        with self.assertRaises(SidecarUnreachable) as cm:
            lock.acquire()
        msg = str(cm.exception)
        self.assertIn("127.0.0.1:%d" % port, msg)
        self.assertIn("base_uri", msg)
        self.assertIn('metaparticle.io/sync: "true"', msg)
        self.assertEqual(cm.exception.address, "127.0.0.1:%d" % port)
        self.assertFalse(lock.held)

        election = metaparticle_sync.Election("nowhere", lambda: None, lambda: None,
                                              base_uri="127.0.0.1:%d" % port, retry_timeout=0.3)
        with self.assertRaises(SidecarUnreachable) as cm:
            election.run()
        self.assertIn("127.0.0.1:%d" % port, str(cm.exception))

    def test_address_from_environment_and_default(self):
        addr = "127.0.0.1:%d" % harness.free_port()
        with mock.patch.dict(os.environ, {"METAPARTICLE_SYNC_ADDR": addr}):
            self.assertEqual(Lock("x").address, addr)
            self.assertEqual(Lock("x", base_uri="http://localhost:13131").address, "localhost:13131")
            with self.assertRaises(SidecarUnreachable) as cm:
                Lock("x", retry_timeout=0).acquire()
            self.assertIn("$METAPARTICLE_SYNC_ADDR", str(cm.exception))
        with mock.patch.dict(os.environ, {}, clear=True):
            self.assertEqual(Lock("x").address, metaparticle_sync.DEFAULT_ADDRESS)
        self.assertEqual(metaparticle_sync.DEFAULT_ADDRESS, "127.0.0.1:13131")

    def test_invalid_arguments(self):
        for bad in ("", None, 7):
            with self.assertRaises(ValueError):
                Lock(bad)
        with self.assertRaises(ValueError):
            Lock("x", ttl=0.5)
        with self.assertRaises(ValueError):
            Lock("x", base_uri="https://127.0.0.1:13131")


if __name__ == "__main__":
    unittest.main()
