"""PEP 517 build backend of the metaparticle-sync Python package, standard library only.

pyproject.toml names this backend so that `pip install ./sdk/python` works offline, with or
without build isolation: it needs nothing from a package index. When setuptools can build wheels
in the building interpreter (setuptools 70.1 or later, or the wheel package installed), every hook
is setuptools.build_meta's. Otherwise (an isolated build, or setuptools 65 without wheel, as
with Python 3.11's bundled setuptools) the package, a handful of pure-Python modules, is packed
here: a py3-none-any wheel, an editable wheel, and an sdist, with metadata from pyproject.toml.
"""

import base64
import hashlib
import io
import os
import re
import tarfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "metaparticle_sync"


def _setuptools():
    """setuptools.build_meta if setuptools can build wheels here, else None."""
    try:
        from setuptools import build_meta
    except ImportError:
        return None
    try:
        from setuptools.command import bdist_wheel  # noqa: F401 (setuptools >= 70.1)
    except ImportError:
        try:
            import wheel  # noqa: F401
        except ImportError:
            return None
    return build_meta


# ---- metadata ----

def _project():
    """The [project] table of pyproject.toml."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        data = f.read().decode("utf-8")
    try:
        import tomllib
    except ImportError:  # Python < 3.11: the subset of TOML that our pyproject.toml uses
        return _parse_project(data)
    return tomllib.loads(data)["project"]


def _parse_project(text):
    project, table, key, items = {}, None, None, None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if items is not None:  # inside a multi-line array
            if line.startswith("]"):
                project[key], items = items, None
            else:
                items.extend(re.findall(r'"((?:[^"\\]|\\.)*)"', line))
            continue
        m = re.match(r"^\[([^\]]+)\]$", line)
        if m:
            table = m.group(1)
            continue
        m = re.match(r'^([A-Za-z0-9_-]+)\s*=\s*(.*)$', line)
        if not m:
            continue
        k, v = m.groups()
        if table == "project.urls":
            project.setdefault("urls", {})[k] = _string(v)
        elif table == "project":
            if v.startswith("["):
                found = re.findall(r'"((?:[^"\\]|\\.)*)"', v)
                if v.rstrip().endswith("]"):
                    project[k] = found
                else:
                    key, items = k, found
            elif v.startswith("{"):
                project[k] = dict(re.findall(r'([A-Za-z0-9_-]+)\s*=\s*"((?:[^"\\]|\\.)*)"', v))
            else:
                project[k] = _string(v)
    return project


def _string(v):
    m = re.match(r'^"((?:[^"\\]|\\.)*)"', v.strip())
    return m.group(1) if m else v.strip()


def _metadata():
    p = _project()
    lines = [
        "Metadata-Version: 2.1",
        "Name: %s" % p["name"],
        "Version: %s" % p["version"],
        "Summary: %s" % p.get("description", ""),
        "Requires-Python: %s" % p.get("requires-python", ""),
        "License: %s" % p.get("license", {}).get("text", ""),
    ]
    lines += ["Classifier: %s" % c for c in p.get("classifiers", [])]
    lines += ["Project-URL: %s, %s" % kv for kv in p.get("urls", {}).items()]
    readme = p.get("readme")
    body = ""
    if readme:
        lines.append("Description-Content-Type: text/markdown")
        with open(os.path.join(ROOT, readme), encoding="utf-8") as f:
            body = f.read()
    return p["name"], p["version"], "\n".join(lines) + "\n\n" + body


def _dist_name(name):
    return re.sub(r"[-_.]+", "_", name).lower()


def _sources():
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, PACKAGE)):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for fn in sorted(filenames):
            if fn.endswith(".py"):
                full = os.path.join(dirpath, fn)
                out.append((os.path.relpath(full, ROOT).replace(os.sep, "/"), full))
    return out


# ---- wheels ----

def _write_wheel(directory, files, tag_suffix=""):
    """Writes a py3-none-any wheel holding files, [(archive name, bytes)], and its dist-info."""
    name, version, metadata = _metadata()
    dist = "%s-%s" % (_dist_name(name), version)
    info = dist + ".dist-info"
    files = list(files) + [
        (info + "/METADATA", metadata.encode("utf-8")),
        (info + "/WHEEL", b"Wheel-Version: 1.0\nGenerator: metaparticle-sync _build/backend.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
        (info + "/top_level.txt", (PACKAGE + "\n").encode()),
    ]
    record = []
    for arc, data in files:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (arc, digest, len(data)))
    record.append(info + "/RECORD,,")
    files.append((info + "/RECORD", ("\n".join(record) + "\n").encode()))
    filename = "%s%s-py3-none-any.whl" % (dist, tag_suffix)
    with zipfile.ZipFile(os.path.join(directory, filename), "w", zipfile.ZIP_DEFLATED) as z:
        for arc, data in files:
            z.writestr(zipfile.ZipInfo(arc, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return filename


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    st = _setuptools()
    if st is not None:
        return st.build_wheel(wheel_directory, config_settings, metadata_directory)
    files = []
    for arc, full in _sources():
        with open(full, "rb") as f:
            files.append((arc, f.read()))
    return _write_wheel(wheel_directory, files)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    st = _setuptools()
    if st is not None and hasattr(st, "build_editable"):
        return st.build_editable(wheel_directory, config_settings, metadata_directory)
    pth = ("%s\n" % ROOT).encode("utf-8")
    return _write_wheel(wheel_directory, [("__editable__.%s.pth" % _dist_name(PACKAGE), pth)])


def build_sdist(sdist_directory, config_settings=None):
    st = _setuptools()
    if st is not None:
        return st.build_sdist(sdist_directory, config_settings)
    name, version, metadata = _metadata()
    base = "%s-%s" % (_dist_name(name), version)
    members = [("PKG-INFO", metadata.encode("utf-8"))]
    for rel in ("pyproject.toml", "README.md", "_build/backend.py"):
        with open(os.path.join(ROOT, rel), "rb") as f:
            members.append((rel, f.read()))
    for arc, full in _sources():
        with open(full, "rb") as f:
            members.append((arc, f.read()))
    filename = base + ".tar.gz"
    with tarfile.open(os.path.join(sdist_directory, filename), "w:gz", format=tarfile.PAX_FORMAT) as t:
        for rel, data in members:
            ti = tarfile.TarInfo("%s/%s" % (base, rel))
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1577836800
            t.addfile(ti, io.BytesIO(data))
    return filename


def get_requires_for_build_wheel(config_settings=None):
    st = _setuptools()
    return st.get_requires_for_build_wheel(config_settings) if st is not None else []


def get_requires_for_build_sdist(config_settings=None):
    st = _setuptools()
    return st.get_requires_for_build_sdist(config_settings) if st is not None else []


def get_requires_for_build_editable(config_settings=None):
    st = _setuptools()
    if st is not None and hasattr(st, "get_requires_for_build_editable"):
        return st.get_requires_for_build_editable(config_settings)
    return []
