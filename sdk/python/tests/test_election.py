"""Election against real side-cars on a real API server."""

import logging
import queue
import threading
import time
import unittest

import harness
from harness import PATIENCE

from metaparticle_sync import Election, SidecarUnreachable


class Candidate(harness.RunningElection):
    """An Election running on a thread, recording its callbacks."""

    def __init__(self, test, sidecar, name="election", retry_timeout=30.0):
        self.sidecar = sidecar
        self.events = queue.Queue()
        super().__init__(test, Election(name, lambda: self.events.put("master"), lambda: self.events.put("lost"),
                                        base_uri=sidecar.address, retry_timeout=retry_timeout))

    def next(self):
        try:
            return self.events.get(timeout=PATIENCE)
        except queue.Empty:
            raise AssertionError("no election callback within %gs" % PATIENCE)


class BlockingCandidate(harness.RunningElection):
    """A candidate whose master_fn records that it started, on which thread, then blocks until
    ``release`` is set, and records that it returns."""

    def __init__(self, test, sidecar, name="election"):
        self.sidecar = sidecar
        self.events = queue.Queue()
        self.release = threading.Event()
        self.threads = []  # the thread of each master_fn call
        super().__init__(test, Election(name, self._master, lambda: self.events.put("lost"), base_uri=sidecar.address))
        test.addCleanup(self.release.set)  # cleanups run last in, first out: before stop()

    def _master(self):
        self.threads.append(threading.current_thread())
        self.events.put("master")
        self.release.wait()
        self.events.put("returned")


class LogRecords(logging.Handler):
    """The metaparticle_sync logger's records (warnings and above), in a queue, while the test
    runs."""

    def __init__(self, test):
        super().__init__()
        self.records = queue.Queue()
        logger = logging.getLogger("metaparticle_sync")
        logger.addHandler(self)
        test.addCleanup(logger.removeHandler, self)

    def emit(self, record):
        self.records.put(record)

    def wait(self, predicate, what):
        """The next record that satisfies predicate; fails after PATIENCE."""
        give_up = time.monotonic() + PATIENCE
        while True:
            try:
                record = self.records.get(timeout=max(0.0, give_up - time.monotonic()))
            except queue.Empty:
                raise AssertionError("got no log record within %gs; want %s" % (PATIENCE, what))
            if predicate(record):
                return record


class ElectionTest(harness.SidecarTestCase):

    def expect(self, candidate, want, what):
        """The candidate's next callback record must be want."""
        try:
            got = repr(candidate.events.get(timeout=PATIENCE))
        except queue.Empty:
            got = "no callback within %gs" % PATIENCE
        if got != repr(want):
            self.fail("%s: got %s; want %r" % (what, got, want))

    def test_one_leader_handover_on_shutdown_and_leader(self):
        sidecars = [self.sidecar("pod-%d" % i) for i in range(3)]
        candidates = [Candidate(self, sc) for sc in sidecars]
        self.eventually(lambda: any(c.election.is_leader for c in candidates), "a leader")
        leaders = [c for c in candidates if c.election.is_leader]
        self.assertEqual(len(leaders), 1)
        first = leaders[0]
        self.assertEqual(first.next(), "master")
        self.assertIsInstance(first.election.token, int)
        holder = first.election.leader()
        self.assertTrue(holder.startswith(first.sidecar.pod + "/"), holder)
        for c in candidates:
            self.assertEqual(c.election.leader(), holder)
            if c is not first:
                self.assertFalse(c.election.is_leader)
                self.assertIsNone(c.election.token)
                self.assertTrue(c.events.empty())

        # shutdown(): lost_master_fn, run() returns, and another candidate leads at once.
        token = first.election.token
        first.stop()
        self.assertFalse(first.thread.is_alive())
        self.assertEqual(first.next(), "lost")
        self.assertEqual(first.error, [])
        rest = [c for c in candidates if c is not first]
        self.eventually(lambda: any(c.election.is_leader for c in rest), "a new leader")
        second = [c for c in rest if c.election.is_leader][0]
        self.assertEqual(second.next(), "master")
        self.assertGreater(second.election.token, token)
        self.eventually(lambda: (second.election.leader() or "").startswith(second.sidecar.pod + "/"), "the new leader to show")

    def test_leader_whose_side_car_is_killed_loses_and_run_raises(self):
        a, b = self.sidecar("pod-a"), self.sidecar("pod-b")
        first = Candidate(self, a, retry_timeout=1.0)
        self.assertEqual(first.next(), "master")
        second = Candidate(self, b)
        a.kill()
        self.assertEqual(first.next(), "lost")
        self.assertFalse(first.election.is_leader)
        # The side-car stays away: run() gives up after the retry timeout and says why.
        first.thread.join(PATIENCE)
        self.assertEqual(len(first.error), 1)
        self.assertIsInstance(first.error[0], SidecarUnreachable)
        self.assertIn(a.address, str(first.error[0]))
        # The other Pod's candidate takes over once the dead side-car's Lease expires.
        self.assertEqual(second.next(), "master")

    def test_leader_keeps_standing_after_losing(self):
        a, b = self.sidecar("pod-a"), self.sidecar("pod-b")
        first = Candidate(self, a)
        self.assertEqual(first.next(), "master")
        second = Candidate(self, b)
        # Pod A's side-car restarts: its candidate loses, the other leads, and the first stands
        # again through the new side-car.
        a.terminate()
        self.assertEqual(first.next(), "lost")
        self.assertEqual(second.next(), "master")
        a.start()
        second.stop()
        self.assertEqual(second.next(), "lost")
        self.assertEqual(first.next(), "master")
        self.assertEqual(first.error, [])

    def test_run_twice_and_shutdown_before_run(self):
        a = self.sidecar("pod-a")
        e = Election("twice", lambda: None, lambda: None, base_uri=a.address)
        e.shutdown()
        e.run()  # returns at once: shutdown() came first
        c = Candidate(self, a, name="twice")
        self.assertEqual(c.next(), "master")
        with self.assertRaises(RuntimeError):
            c.election.run()  # already running
        c.stop()
        self.assertEqual(c.next(), "lost")

    def test_loss_is_reported_at_once_while_master_fn_blocks(self):
        logs = LogRecords(self)
        a, b = self.sidecar("pod-a"), self.sidecar("pod-b")
        first = BlockingCandidate(self, a)
        self.expect(first, "master", "the first candidate's master_fn")
        token = first.election.token
        master = first.threads[0]
        if not isinstance(token, int) or not first.election.is_leader:
            self.fail("in master_fn: got is_leader %r, token %r; want True and an int" % (first.election.is_leader, token))
        second = Candidate(self, b)
        self.eventually(lambda: b.metric("waiting", kind="election") == 1, "the other candidate to stand")

        # Pod A's side-car stops while master_fn is blocked: the loss is reported all the same.
        a.terminate()
        self.expect(first, "lost", "the leader whose side-car stopped while master_fn blocks")
        if first.election.is_leader or first.election.token is not None:
            self.fail("after the loss: got is_leader %r, token %r; want False and None" % (
                first.election.is_leader, first.election.token))
        if master is first.thread or not master.is_alive():
            self.fail("got master_fn on %r (alive: %r); want it still blocked on a thread other than run()'s" % (
                master, master.is_alive()))
        self.expect(second, "master", "the other Pod's candidate")
        if first.election.is_leader:
            self.fail("while another Pod leads: got is_leader True; want False")
        if first.error:
            self.fail("run() of the first candidate: got %r; want it still running" % first.error)

        # The first stands again, through its restarted side-car, and is elected when the other
        # leaves: that term waits for the blocked master_fn, and starts when it returns.
        a.start()
        second.stop()
        self.expect(second, "lost", "the other Pod's candidate, shut down")
        logs.wait(lambda r: r.levelno == logging.WARNING and "still running" in r.getMessage(),
                  "the warning that the new term waits for the previous master_fn")
        if first.election.is_leader or not first.events.empty():
            self.fail("before the old master_fn returned: got is_leader %r, callbacks %r; want False and none" % (
                first.election.is_leader, list(first.events.queue)))
        first.release.set()
        self.expect(first, "returned", "the old master_fn, released")
        self.expect(first, "master", "the new term's master_fn")
        self.expect(first, "returned", "the new term's master_fn (the release is set)")
        if not first.election.is_leader or not first.election.token > token:
            self.fail("after master_fn returned: got is_leader %r, token %r; want True and a token above %d" % (
                first.election.is_leader, first.election.token, token))
        if len(first.threads) != 2 or first.threads[1] in (master, first.thread):
            self.fail("got master_fn threads %r; want a new one for the new term" % (first.threads,))
        first.stop()
        if first.thread.is_alive():
            self.fail("got run() still running after shutdown(); want it returned")
        self.expect(first, "lost", "the first candidate, shut down")
        if first.error:
            self.fail("run(): got %r; want no error" % first.error)

    def test_master_fn_that_raises_is_logged_and_the_term_goes_on(self):
        logs = LogRecords(self)
        a = self.sidecar("pod-a")
        events = queue.Queue()

        def master_fn():
            events.put("master")
            raise RuntimeError("the leader's work failed")

        c = harness.RunningElection(self, Election("raising", master_fn, lambda: events.put("lost"), base_uri=a.address))
        record = logs.wait(lambda r: r.exc_info is not None, "master_fn's exception, logged")
        if record.levelno != logging.ERROR or not isinstance(record.exc_info[1], RuntimeError):
            self.fail("got %s record of %r; want ERROR with the RuntimeError" % (record.levelname, record.exc_info[1]))
        self.assertEqual(events.get(timeout=PATIENCE), "master")
        if not c.election.is_leader or not c.thread.is_alive() or c.error:
            self.fail("after master_fn raised: got is_leader %r, run() alive %r, error %r; want True, True, none" % (
                c.election.is_leader, c.thread.is_alive(), c.error))
        c.stop()
        self.assertEqual(events.get(timeout=PATIENCE), "lost")
        self.assertEqual(c.error, [])


if __name__ == "__main__":
    unittest.main()
