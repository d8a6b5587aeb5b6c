"""The seed's two examples, copied verbatim into sdk/python/examples, run as processes against
real side-cars and behave as the seed describes.

The lock example sleeps 30 s while holding the lock. It runs through run_example.py, which
patches time.sleep so that the test ends each sleep: the example's code is unchanged, and the
test waits for the hand-over, not for 30 s.
"""

import unittest

import harness
from harness import EXAMPLES


class ExamplesTest(harness.SidecarTestCase):

    def test_lock_example_two_pods_take_turns(self):
        """"...which will create two different Pods, both of which are trying to obtain a lock
        named test": one prints "I have the lock!", holds it through its sleep, releases it, and
        only then does the other print it."""
        pods = {}
        for pod in ("lock-python-a", "lock-python-b"):
            sc = self.sidecar(pod)
            pods[pod] = (sc, self.python([harness.TESTS / "run_example.py", EXAMPLES / "lock.py"], sidecar=sc, name=pod))

        # Whoever wins prints the line and sleeps; the other waits in its side-car.
        self.eventually(lambda: any("I have the lock!" in p.seen for _, p in pods.values()), "a process to hold the lock")
        first = [pod for pod, (_, p) in pods.items() if "I have the lock!" in p.seen]
        self.assertEqual(len(first), 1, "both processes hold the lock")
        first = first[0]
        second = [pod for pod in pods if pod != first][0]
        sc1, p1 = pods[first]
        sc2, p2 = pods[second]
        p1.expect("[runner] sleep(30)", "the example's sleep")
        self.eventually(lambda: sc2.metric("waiting", kind="lock") == 1, "the second process to wait")
        self.assertNotIn("I have the lock!", p2.seen)
        self.assertTrue(sc2.lock_state("test")["holder"].startswith(first + "/"))

        # The first one's sleep ends: it releases and exits; the second gets the lock.
        p1.send("")
        self.assertEqual(p1.wait(), 0, p1.output())
        p2.expect("I have the lock!", "the second process to get the lock")
        p2.expect("[runner] sleep(30)", "the second process's sleep")
        self.assertTrue(sc1.lock_state("test")["holder"].startswith(second + "/"))
        p2.send("")
        self.assertEqual(p2.wait(), 0, p2.output())
        self.eventually(lambda: not sc1.lock_state("test")["held"], "the lock to be free")

    def test_election_example_three_replicas(self):
        """"...deploys three leader replicas": one is the master; when it fails, a new leader is
        chosen; a master that loses its side-car says "I lost the master"."""
        procs = []
        for i in range(3):
            sc = self.sidecar("elector-python-%d" % i)
            procs.append((sc, self.python([EXAMPLES / "election.py"], sidecar=sc, name=sc.pod)))

        def masters():
            return [(sc, p) for sc, p in procs if p.seen.count("I am the master") > p.seen.count("I lost the master")]

        self.eventually(lambda: len(masters()) == 1, "one master")
        (sc1, p1), = masters()
        self.assertTrue(sc1.election_state("test")["holder"].startswith(sc1.pod + "/"))
        for sc, p in procs:
            if p is not p1:
                self.assertNotIn("I am the master", p.seen)

        # The master's side-car dies: the master says so, and another replica leads.
        sc1.kill()
        p1.expect("I lost the master", "the old master to say it lost")
        self.eventually(lambda: len(masters()) == 1 and masters()[0][1] is not p1, "a new master")
        (sc2, p2), = masters()

        # The new master's process dies: the third replica leads.
        p2.kill()
        self.eventually(lambda: any(p.seen.count("I am the master") == 1 for sc, p in procs if p not in (p1, p2)),
                        "the third replica to become master")
        (sc3, p3), = [(sc, p) for sc, p in procs if p not in (p1, p2)]
        self.assertTrue(sc3.election_state("test")["holder"].startswith(sc3.pod + "/"))
        self.assertEqual(p3.proc.poll(), None, "the example keeps running")


if __name__ == "__main__":
    unittest.main()
