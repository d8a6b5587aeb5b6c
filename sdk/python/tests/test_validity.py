"""Hold validity: a hold is lost when the side-car does not confirm it in time.

A side-car that is paused (SIGSTOP, a frozen node) cannot say that a hold is lost, and other
Pods may take the lock about a lease duration after the pause began. So every grant carries
validForMillis, every keep-alive answer lists the session's holds with their validity, and the
client trusts a hold until the validity, counted from when it sent the request that returned it,
runs out without a newer confirmation. FrozenSidecarTest checks, against real side-cars with
3 s leases and a 30 s session TTL (whose three quarters would come far too late), that a holder
and a leader whose side-car is frozen are told they lost before another Pod is granted, and that
holds and leaderships that are confirmed last for many validity periods. ValidityFakeTest checks
the finer rules against a stand-in side-car: an elected event waits for a keep-alive sent after
it, a blocking acquire that waited long confirms before it returns, keep-alives go as often as
the side-car asks, and a hold that stops being confirmed is lost.
"""

import os
import queue
import signal
import threading
import time
import unittest

import harness
from harness import PATIENCE
from test_session_secret import FakeSidecar

from metaparticle_sync import Election, Lock

#: A session TTL long enough that the old rule (¾ of it without word from the side-car) would
#: report a frozen side-car's holds lost only after another Pod may have taken them.
LONG_TTL = 30


class Recorder:
    """Callbacks that record (what, time.monotonic()) in a queue."""

    def __init__(self):
        self.events = queue.Queue()

    def put(self, what):
        self.events.put((what, time.monotonic()))

    def callback(self, what):
        return lambda: self.put(what)

    def next(self, patience=PATIENCE):
        try:
            return self.events.get(timeout=patience)
        except queue.Empty:
            raise AssertionError("no callback within %gs" % patience)


class Candidate(harness.RunningElection):
    """An Election running on a thread, recording its callbacks with their times."""

    def __init__(self, test, sidecar, name="election", ttl=LONG_TTL, address=None):
        self.rec = Recorder()
        super().__init__(test, Election(name, self.rec.callback("master"), self.rec.callback("lost"),
                                        base_uri=address or sidecar.address, ttl=ttl))


class FrozenSidecarTest(harness.SidecarTestCase):

    def freeze(self, sc):
        os.kill(sc.proc.pid, signal.SIGSTOP)
        self.addCleanup(os.kill, sc.proc.pid, signal.SIGCONT)  # before the side-car's stop

    def test_frozen_holders_loss_is_told_before_another_pod_is_granted(self):
        a, b = self.sidecar("pod-a"), self.sidecar("pod-b")
        rec = Recorder()
        holder = Lock("frozen", base_uri=a.address, lock_lost_callback=rec.callback("lost"), ttl=LONG_TTL)
        self.assertTrue(holder.acquire())
        token = holder.token
        self.assertLess(holder._session.every, LONG_TTL / 3, "keep-alives must go as often as the side-car asks")

        waiter = Lock("frozen", base_uri=b.address)
        granted = []
        t = threading.Thread(target=lambda: granted.append((waiter.acquire(), time.monotonic())), daemon=True)
        t.start()
        self.eventually(lambda: b.metric("waiting", kind="lock") == 1, "the other Pod to wait")

        frozen_at = time.monotonic()
        self.freeze(a)
        what, lost_at = rec.next()
        self.assertEqual(what, "lost")
        self.assertFalse(holder.held)
        self.assertIsNone(holder.token)
        self.assertIn("validity", holder.lost_reason)
        t.join(PATIENCE)
        self.assertFalse(t.is_alive(), "the other Pod was never granted the lock")
        ok, granted_at = granted[0]
        self.assertTrue(ok)
        self.assertGreater(waiter.token, token)
        self.assertLess(lost_at, granted_at, "the holder was told it lost the lock %.3fs after the other Pod got it "
                        "(frozen at 0, lost at %.3fs, granted at %.3fs)" % (
                            lost_at - granted_at, lost_at - frozen_at, granted_at - frozen_at))
        # Long before the session's TTL could have told it.
        self.assertLess(lost_at - frozen_at, LONG_TTL * 3 / 4)

        os.kill(a.proc.pid, signal.SIGCONT)
        holder.release()  # after a loss, release only cleans up
        self.assertEqual(b.lock_state("frozen")["holder"], waiter.holder)
        waiter.release()

    def test_frozen_leaders_loss_is_told_before_another_candidate_leads(self):
        a, b = self.sidecar("pod-a"), self.sidecar("pod-b")
        first = Candidate(self, a)
        self.assertEqual(first.rec.next()[0], "master")
        token = first.election.token
        second = Candidate(self, b)
        self.eventually(lambda: b.metric("waiting", kind="election") == 1, "the other candidate to stand")

        frozen_at = time.monotonic()
        self.freeze(a)
        what, lost_at = first.rec.next()
        self.assertEqual(what, "lost")
        self.assertFalse(first.election.is_leader)
        what, led_at = second.rec.next()
        self.assertEqual(what, "master")
        self.assertGreater(second.election.token, token)
        self.assertLess(lost_at, led_at, "the leader was told it lost %.3fs after the other candidate was elected "
                        "(frozen at 0, lost at %.3fs, elected at %.3fs)" % (
                            lost_at - led_at, lost_at - frozen_at, led_at - frozen_at))
        self.assertLess(lost_at - frozen_at, LONG_TTL * 3 / 4)

        # Thawed, the first candidate stands again (on a new session) and leads once the
        # second leaves.
        os.kill(a.proc.pid, signal.SIGCONT)
        self.eventually(lambda: a.metric("waiting", kind="election") == 1, "the first candidate to stand again")
        second.stop()
        self.assertEqual(second.rec.next()[0], "lost")
        self.assertEqual(first.rec.next()[0], "master")
        self.assertEqual(first.error, [])

    def test_confirmed_holds_last_many_validity_periods(self):
        # Holds whose side-car answers are confirmed by each keep-alive: nothing is lost while
        # several times the longest validity (the renew deadline, 2 s) goes by.
        a = self.sidecar("pod-a")
        rec = Recorder()
        lock = Lock("steady", base_uri=a.address, lock_lost_callback=rec.callback("lost"), ttl=LONG_TTL)
        self.assertTrue(lock.acquire())
        token, holder = lock.token, lock.holder
        leader = Candidate(self, a, name="steady")
        self.assertEqual(leader.rec.next()[0], "master")
        term = leader.election.token

        renewals = []
        give_up = time.monotonic() + PATIENCE
        while len(set(renewals)) < 6:  # five renewals: about 5 s, at a renew period of 1 s
            self.assertLess(time.monotonic(), give_up, "the side-car did not renew the lock")
            renewals.append(a.lock_state("steady")["renewTime"])
            time.sleep(0.1)

        self.assertTrue(rec.events.empty(), "the lock was lost: %s" % lock.lost_reason)
        self.assertTrue(lock.held)
        self.assertEqual(lock.token, token)
        self.assertEqual(a.lock_state("steady")["holder"], holder)
        self.assertTrue(leader.rec.events.empty(), "unexpected election callback: %r" % (leader.rec.events.queue,))
        self.assertTrue(leader.election.is_leader)
        self.assertEqual(leader.election.token, term)
        lock.release()
        self.assertTrue(rec.events.empty())
        leader.stop()
        self.assertEqual(leader.rec.next()[0], "lost")
        self.assertEqual(leader.error, [])


class ValidityFakeTest(unittest.TestCase):
    """Against a stand-in side-car that gives validities."""

    def keepalives(self, fake, after=0.0):
        return [t for t, m, p in list(fake.timeline) if m == "POST" and p.endswith("/keepalive") and t >= after]

    def test_keep_alives_go_as_often_as_the_side_car_asks(self):
        fake = FakeSidecar(self, validity=5000, keep_alive_millis=100)
        lock = Lock("often", base_uri=fake.address, ttl=LONG_TTL)
        self.assertTrue(lock.acquire())
        self.assertAlmostEqual(lock._session.every, 0.1)
        since = time.monotonic()
        give_up = since + PATIENCE
        while len(self.keepalives(fake, since)) < 5:
            self.assertLess(time.monotonic(), give_up, "keep-alives do not go every 100ms")
            time.sleep(0.05)
        self.assertTrue(lock.held)
        lock.release()
        # A side-car that asks for nothing gets keep-alives every TTL/3, as before.
        old = FakeSidecar(self, validity=None)
        lock = Lock("often", base_uri=old.address, ttl=LONG_TTL)
        self.assertTrue(lock.acquire())
        self.assertAlmostEqual(lock._session.every, LONG_TTL / 3)
        time.sleep(0.5)
        self.assertEqual(self.keepalives(old), [], "a keep-alive went before TTL/3")
        lock.release()

    def test_unconfirmed_lock_is_lost_when_its_validity_runs_out(self):
        fake = FakeSidecar(self, validity=2000, keep_alive_millis=200)
        rec = Recorder()
        lock = Lock("unconfirmed", base_uri=fake.address, lock_lost_callback=rec.callback("lost"), ttl=LONG_TTL)
        self.assertTrue(lock.acquire())
        time.sleep(2.5)  # longer than the validity: keep-alives confirm it
        self.assertTrue(lock.held, lock.lost_reason)
        self.assertTrue(rec.events.empty())
        stopped = time.monotonic()
        fake.confirming = False  # keep-alives still succeed, but no longer list the lock
        what, lost_at = rec.next()
        self.assertEqual(what, "lost")
        self.assertFalse(lock.held)
        self.assertIn("validity", lock.lost_reason)
        # Told by the validity, long before three quarters of the TTL.
        self.assertLess(lost_at - stopped, LONG_TTL * 3 / 4)
        lock.release()

    def test_elected_event_waits_for_a_keep_alive_sent_after_it(self):
        fake = FakeSidecar(self, validity=2000, keep_alive_millis=200)
        fake.confirming = False
        rec = Recorder()
        election = Election("fake-election", rec.callback("master"), rec.callback("lost"),
                            base_uri=fake.address, ttl=LONG_TTL)
        t = threading.Thread(target=election.run, daemon=True)
        t.start()
        self.addCleanup(t.join, PATIENCE)
        self.addCleanup(election.shutdown)
        give_up = time.monotonic() + PATIENCE
        while not any(m == "PUT" for _, m, _ in list(fake.timeline)):
            self.assertLess(time.monotonic(), give_up, "the election was not joined")
            time.sleep(0.02)
        # Elected on the stream, but no keep-alive confirms it: not the leader.
        with self.assertRaises(queue.Empty):
            rec.events.get(timeout=1.0)
        self.assertFalse(election.is_leader)
        confirming_since = time.monotonic()
        fake.confirming = True
        what, led_at = rec.next()
        self.assertEqual(what, "master")
        self.assertTrue(election.is_leader)
        self.assertEqual(election.token, 9)
        self.assertTrue([k for k in self.keepalives(fake, confirming_since) if k <= led_at],
                        "led without a keep-alive sent after the side-car began to confirm")
        # It stays leader while confirmed (for longer than the validity), and loses when
        # confirmations stop.
        time.sleep(2.5)
        self.assertTrue(rec.events.empty(), rec.events.queue)
        fake.confirming = False
        self.assertEqual(rec.next()[0], "lost")
        self.assertFalse(election.is_leader)
        # The session ended (the side-car could not be asked to give up that one term): the
        # election stands again on a new session, and leads once confirmed.
        fake.confirming = True
        self.assertEqual(rec.next()[0], "master")
        opens = [p for _, m, p in list(fake.timeline) if m == "POST" and p == "/v1/sessions"]
        self.assertGreaterEqual(len(opens), 2)
        election.shutdown()
        self.assertEqual(rec.next()[0], "lost")

    def test_elected_event_of_an_older_side_car_leads_at_once(self):
        fake = FakeSidecar(self, validity=None)
        rec = Recorder()
        election = Election("fake-election", rec.callback("master"), rec.callback("lost"), base_uri=fake.address, ttl=2)
        t = threading.Thread(target=election.run, daemon=True)
        t.start()
        self.addCleanup(t.join, PATIENCE)
        self.addCleanup(election.shutdown)
        self.assertEqual(rec.next()[0], "master")
        time.sleep(1.0)  # several keep-alives (every 2/3 s) that list nothing: still leading
        self.assertTrue(election.is_leader)
        election.shutdown()
        self.assertEqual(rec.next()[0], "lost")

    def test_long_blocking_acquire_confirms_before_returning(self):
        # The grant arrives 1.2 s after the request was sent, with a validity of 2 s counted
        # from then: more than half of it is gone, so a keep-alive confirms it first. (The
        # side-car asks for keep-alives every 10 s, so that none but that one comes between.)
        fake = FakeSidecar(self, validity=2000, keep_alive_millis=10000, lock_delay=1.2)
        lock = Lock("slow", base_uri=fake.address, ttl=LONG_TTL)
        self.assertTrue(lock.acquire())
        returned = time.monotonic()
        granted = [t for t, m, _ in list(fake.timeline) if m == "granted"][-1]
        self.assertTrue([k for k in self.keepalives(fake, granted) if k <= returned],
                        "acquire returned without confirming the grant")
        self.assertTrue(lock.held)
        lock.release()

        # If the side-car does not confirm it, the grant is not trusted: the acquire retries.
        fake.confirming = False
        lock = Lock("slow", base_uri=fake.address, ttl=LONG_TTL)
        got = []
        t = threading.Thread(target=lambda: got.append(lock.acquire()), daemon=True)
        t.start()
        give_up = time.monotonic() + PATIENCE
        while len([1 for _, m, _ in list(fake.timeline) if m == "granted"]) < 3:
            self.assertLess(time.monotonic(), give_up, "the acquire did not retry")
            time.sleep(0.05)
        self.assertEqual(got, [])
        self.assertFalse(lock.held)
        fake.confirming = True
        t.join(PATIENCE)
        self.assertEqual(got, [True])
        lock.release()


if __name__ == "__main__":
    unittest.main()
