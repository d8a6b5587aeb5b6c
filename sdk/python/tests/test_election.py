"""Election against real side-cars on a real API server."""

import queue
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


class ElectionTest(harness.SidecarTestCase):

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


if __name__ == "__main__":
    unittest.main()
