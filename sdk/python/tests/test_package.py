"""The package itself: standard library only, Python 3.9 syntax, installable offline."""

import ast
import os
import re
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import harness

from metaparticle_sync import _http

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

PACKAGE = harness.SDK / "metaparticle_sync"


class PackageTest(unittest.TestCase):

    def sources(self):
        files = sorted(PACKAGE.glob("*.py"))
        self.assertTrue(files)
        return files

    def test_python_3_9_syntax(self):
        for f in self.sources():
            ast.parse(f.read_text(), str(f), feature_version=(3, 9))

    def test_standard_library_only(self):
        stdlib = set(sys.stdlib_module_names)
        for f in self.sources():
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    self.assertIn(name.split(".")[0], stdlib, "%s imports %s" % (f.name, name))

    def test_library_never_calls_time_sleep(self):
        # Applications (and run_example.py) may patch time.sleep; the library waits on Events.
        for f in self.sources():
            self.assertIsNone(re.search(r"\bsleep\s*\(", f.read_text()), "%s calls sleep()" % f.name)

    @unittest.skipIf(tomllib is None, "needs tomllib (Python 3.11) to compare with")
    def test_build_backend_reads_pyproject_without_tomllib(self):
        # Python 3.9 and 3.10 have no tomllib: the backend's own reader must agree with it.
        sys.path.insert(0, str(harness.SDK / "_build"))
        try:
            import backend
        finally:
            sys.path.pop(0)
        text = (harness.SDK / "pyproject.toml").read_text()
        self.assertEqual(backend._parse_project(text), tomllib.loads(text)["project"])

    def test_examples_are_the_seeds(self):
        self.assertEqual((harness.EXAMPLES / "lock.py").read_text(),
                         "from metaparticle_sync import Lock\nimport time\n\nl = Lock('test')\nl.acquire()\n"
                         "print('I have the lock!')\ntime.sleep(30)\nl.release()\n")
        self.assertEqual((harness.EXAMPLES / "election.py").read_text(),
                         "import metaparticle_sync\n\ndef master_fn():\n    print('I am the master')\n\n"
                         "def lost_master_fn():\n    print('I lost the master')\n\n"
                         "el = metaparticle_sync.Election('test', master_fn, lost_master_fn)\nel.run()\n\n")

    def test_escape_name(self):
        for name, want in [("orders/eu", "orders%2Feu"), ("a b", "a%20b"), (".", "%2E"), ("..", "%2E%2E"),
                           ("100%", "100%25"), ("锁", "%E9%94%81"), ("plain-name_1.x", "plain-name_1.x")]:
            self.assertEqual(_http.escape_name(name), want)

    def test_pip_install_offline(self):
        with tempfile.TemporaryDirectory() as d:
            venv = Path(d) / "venv"
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            py = venv / "bin" / "python"
            env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
            env.pop("PYTHONPATH", None)
            subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-index", "--no-build-isolation", str(harness.SDK)],
                           check=True, env=env, cwd=d)
            out = subprocess.run([str(py), "-c", "import metaparticle_sync as m; print(m.__version__, m.__file__)"],
                                 check=True, env=env, cwd=d, capture_output=True, text=True).stdout
            version, path = out.split()
            self.assertEqual(version, __import__("metaparticle_sync").__version__)
            self.assertTrue(path.startswith(str(venv)), path)


if __name__ == "__main__":
    unittest.main()
