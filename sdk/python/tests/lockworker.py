"""A process that holds a metaparticle_sync.Lock on command, for the contention tests.

Usage: python3 lockworker.py NAME. Commands on standard input, one per line:
acquire | try | timeout SECONDS | release | exit. Each is answered with one JSON line
{"reply": COMMAND, ...}; the lock's callbacks print {"event": "acquired"} and {"event": "lost"}.
"""

import json
import sys

from metaparticle_sync import Lock


def say(**kw):
    print(json.dumps(kw), flush=True)


def main():
    lock = Lock(sys.argv[1], lock_callback=lambda: say(event="acquired"),
                lock_lost_callback=lambda: say(event="lost", reason=lock.lost_reason))
    say(ready=True, address=lock.address)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        try:
            if cmd == "acquire":
                ok = lock.acquire()
            elif cmd == "try":
                ok = lock.acquire(blocking=False)
            elif cmd == "timeout":
                ok = lock.acquire(timeout=float(arg))
            elif cmd == "release":
                lock.release()
                ok = True
            elif cmd == "exit":
                return
            else:
                say(reply=cmd, error="unknown command")
                continue
            say(reply=cmd, ok=ok, held=lock.held, token=lock.token, holder=lock.holder)
        except Exception as e:
            say(reply=cmd, error="%s: %s" % (type(e).__name__, e))


if __name__ == "__main__":
    main()
