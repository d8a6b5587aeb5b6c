"""Runs an example script unchanged, with time.sleep patched so that the test decides when a
sleep ends: each time.sleep(seconds) prints "[runner] sleep(<seconds>)" to standard error and
returns when a line arrives on standard input. The library never calls time.sleep, so only the
example's own sleeps are affected.

Usage: python3 -u run_example.py EXAMPLE.py
"""

import runpy
import sys
import time


def controlled_sleep(seconds):
    print("[runner] sleep(%g)" % seconds, file=sys.stderr, flush=True)
    sys.stdin.readline()


time.sleep = controlled_sleep
runpy.run_path(sys.argv[1], run_name="__main__")
