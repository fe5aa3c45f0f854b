"""Locks: Synapse and every package it needs, pinned (==) and hashed, one file per Synapse version
and Python (`synapse-<version>-py<python>.txt` in this folder, package data).

A host's venv is installed from the lock of its `synapse_version` for its Debian's python3
(`uv pip install --require-hashes --no-deps --only-binary :all: -r LOCK`), so two hosts deployed a
month apart run the same code, and a file that differs from the one locked is refused. uv itself
comes pinned and hashed too, from `uv-<UV_VERSION>.txt` (installed by the venv's pip).
`federate synapse-lock VERSION` makes the locks for a new version with uv, from the package index
the controller's pip uses (read at run time; no index is written into a lock).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from federate.deploy.database import driver_requirements

LOCK_DIR = Path(__file__).parent
# Only the locked files, nothing resolved on the host, nothing built there (a build would fetch
# unhashed build tools).
LOCKED_INSTALL = "--require-hashes --no-deps --only-binary :all:"
PLATFORM = "linux"  # uv's name for x86_64 Linux; every file of each pinned version is hashed, so arm64 matches too
UV_VERSION = "0.13.9"  # the uv that installs the venv on the hosts (its lock: uv_lock_name())


def lock_name(version: str, python: str, redis: bool = False) -> str:
    """synapse-<version>-py<python>.txt, or with Redis (workers) synapse-<version>-redis-py<python>.txt."""
    return f"synapse-{version}{'-redis' * redis}-py{python}.txt"


def uv_lock_name(version: str = UV_VERSION) -> str:
    return f"uv-{version}.txt"


def uv_lock(directory: Path = LOCK_DIR) -> str:
    """The text of uv's own lock (every wheel of UV_VERSION, hashed); FileNotFoundError names the
    command that makes it."""
    path = directory / uv_lock_name()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: uv's lock is missing; make it with federate synapse-lock VERSION")
    return path.read_text()


def requirements(version: str, redis: bool = False) -> list[str]:
    """What a lock pins with all its dependencies: Synapse and the PostgreSQL driver (and for workers,
    Synapse's `redis` extra, within the bounds that Synapse version sets)."""
    return [f"matrix-synapse{'[redis]' * redis}=={version}", *driver_requirements()]


def regenerate_command(version: str, python: str | None = None) -> str:
    return f"federate synapse-lock {version}" + (f" --python {python}" if python else "")


def shipped(version: str, python: str, directory: Path = LOCK_DIR, redis: bool = False) -> str | None:
    """The lock's text, or None when there is none for this version and Python."""
    path = directory / lock_name(version, python, redis)
    return path.read_text() if path.is_file() else None


def unlocked(version: str, redis: bool = False) -> str:
    """The requirements file used without a lock: only the top-level pins (dependencies float)."""
    return (f"# No lock for matrix-synapse {version}: its dependencies are whatever the index has today.\n"
            f"# Make one on the controller: {regenerate_command(version)}\n"
            + "".join(f"{r}\n" for r in requirements(version, redis)))


def _logical_lines(text: str) -> list[str]:
    """A requirements file's lines with continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def pins(text: str, require_hashes: bool = True) -> dict[str, str]:
    """{canonical name: version} of a requirements text whose every line is `name==version`
    (with `--hash=sha256:...` options when `require_hashes`); ValueError names the first line
    that is not. A lock holds no URL: it would name an index or a file outside the lock."""
    return dict(_pins(text, require_hashes))  # a copy: the parsed lock is kept for the next host


@functools.lru_cache(maxsize=8)
def _pins(text: str, require_hashes: bool) -> dict[str, str]:
    """Parsed once per run, not once per host (5 ms each: every package's requirement parsed)."""
    if "://" in text:
        raise ValueError("a lock names no URL (index, file or VCS)")
    found = {}
    for line in _logical_lines(text):
        words = line.split()
        hashes = [w for w in words if w.startswith("--hash=sha256:")]
        spec = " ".join(w for w in words if not w.startswith("--hash="))
        try:
            requirement = Requirement(spec)
        except InvalidRequirement as error:
            raise ValueError(f"not a requirement: {line[:80]!r} ({error})") from None
        specifiers = list(requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==" or "*" in specifiers[0].version:
            raise ValueError(f"{requirement.name}: not pinned with == ({spec!r})")
        if require_hashes and not hashes:
            raise ValueError(f"{requirement.name}: no --hash=sha256:")
        # Only the top-level pins used without a lock name an extra (Synapse's `redis`, for workers).
        if requirement.marker is not None or requirement.url or (requirement.extras and require_hashes):
            raise ValueError(f"{requirement.name}: markers, URLs and extras have no place in a lock ({spec!r})")
        found[canonicalize_name(requirement.name)] = specifiers[0].version
    if not found:
        raise ValueError("no requirement")
    return found


# --- making locks: `federate synapse-lock` -----------------------------------------------------

def _uv() -> str:
    try:
        from uv import find_uv_bin  # the uv package from the index, as in the test extra

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
    if not found:
        raise RuntimeError("federate synapse-lock needs uv: pip install uv")
    return found


def _index_options() -> list[str]:
    """The network indexes of the controller's pip (its config files and PIP_* variables); none
    means uv's default, which is pip's. file:// indexes, find-links and constraints of this
    machine mean nothing on a host and stay out."""
    from federate.lab.sources import controller_pip_indexes  # stdlib only, no lab extra needed

    indexes = controller_pip_indexes()
    options = ["--index-url", indexes.index_url] if indexes.index_url else []
    for url in indexes.extra_index_urls:
        options += ["--extra-index-url", url]
    return options


def header(version: str, python: str, redis: bool = False) -> str:
    what = " with its Redis client (workers)" if redis else ""
    return (f"# matrix-synapse {version}{what} and every package it needs, for CPython {python} on Linux: each pinned,\n"
            f"# each file hashed. federate installs it with uv pip install {LOCKED_INSTALL} -r <this file>.\n"
            f"# Made (again) by: {regenerate_command(version, python)}\n")


def uv_header(version: str = UV_VERSION) -> str:
    return (f"# uv {version}, which installs Synapse's venv on the hosts: every wheel of it hashed.\n"
            f"# federate installs it with pip install {LOCKED_INSTALL} --target <dir> -r <this file>.\n"
            "# Made (again), when UV_VERSION in federate/deploy/locks changes, by: federate synapse-lock VERSION\n")


# uv trusts the platform's certificate store, as pip does: an HTTPS proxy that re-signs (a lab's, many
# companies') is then trusted too. Both names of the switch: newer uv reads the first, older the second.
# A few downloads at a time, not uv's 50: hosts deployed together often share one proxy (a lab's
# or an office's), and 10 hosts' 500 connections at once timed out on the lab's (bench/scale.py).
UV_ENV = {"UV_NO_PROGRESS": "1", "UV_SYSTEM_CERTS": "1", "UV_NATIVE_TLS": "1", "UV_CONCURRENT_DOWNLOADS": "6"}


def _compile(wanted: list[str], python: str, target: Path, start_from: Path | None, what: str) -> str:
    """uv pip compile of `wanted` for `python` on Linux, each file hashed; the versions already in
    `start_from` (a lock) are preferred where they still fit. The lock's text, without a header."""
    with tempfile.TemporaryDirectory() as work:
        output = Path(work) / target.name
        if start_from is not None and start_from.exists():
            shutil.copyfile(start_from, output)  # uv prefers the versions there
        command = [_uv(), "pip", "compile", "-", "--output-file", str(output), "--quiet", "--no-config",
                   "--generate-hashes", "--no-header", "--only-binary", ":all:",
                   "--python-version", python, "--python-platform", PLATFORM, *_index_options()]
        result = subprocess.run(command, input="\n".join(wanted) + "\n", text=True,
                                capture_output=True, timeout=600, env={**os.environ, **UV_ENV})
        if result.returncode != 0:
            raise RuntimeError(f"uv could not lock {what} for Python {python}:\n{result.stderr.strip()[-3000:]}")
        return output.read_text()


def _write(target: Path, text: str) -> Path:
    pins(text)  # pinned and hashed, no URL, or no file
    partial = target.with_name(f".{target.name}.tmp")
    partial.write_text(text)
    partial.replace(target)
    return target


def make_lock(version: str, python: str, out_dir: Path = LOCK_DIR, redis: bool = False) -> Path:
    """Resolve and hash the lock of `version` for `python` into out_dir (an existing lock's pins are
    kept where they still fit: delete it to resolve afresh). The Redis lock starts from the plain
    one, so turning workers on adds packages without moving the others."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / lock_name(version, python, redis)
    plain = out_dir / lock_name(version, python)
    text = _compile(requirements(version, redis), python, target,
                    target if target.exists() or not redis else plain, f"matrix-synapse {version}")
    return _write(target, header(version, python, redis) + text)


def make_uv_lock(out_dir: Path = LOCK_DIR) -> Path:
    """uv's own lock: uv==UV_VERSION with every wheel's hash (one binary for any Python 3)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / uv_lock_name()
    text = _compile([f"uv=={UV_VERSION}"], "3.11", target, None, f"uv {UV_VERSION}")
    return _write(target, uv_header() + text)
