"""Issue 14 (item 1): `federate backup` copies what beta.test needs to come back, from outside.

On the shared lab: bob leaves a room, a message and a file on beta.test; the backup's signing key
and secrets are the host's (by hash), the database dump is a PostgreSQL custom-format archive, the
media archive holds bob's file (local media only), the config archive the homeserver.yaml, the
manifest's sizes and hashes match the files, and everything is private (0600 in 0700).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from federate.lab import prove
from federate.lab.clients import leave_traces
from federate.lab.runner import REPO_ROOT

pytestmark = pytest.mark.lab

FEDERATE = str(Path(sys.executable).parent / "federate")
NAME = "beta.test"


def federate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FEDERATE, *args], cwd=REPO_ROOT, text=True, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=600)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_backup_holds_what_the_homeserver_needs(deployed, tmp_path):
    info = deployed.info
    bob = prove.accounts(prove.load_settings(deployed.inventory))[NAME]
    traces = asyncio.run(leave_traces(bob, info["dns"], info["ca_file"]))
    result = federate("backup", deployed.inventory, "--server", NAME, "--to", str(tmp_path / "backups"))
    assert result.returncode == 0, result.stderr
    folder = Path(result.stdout.strip())
    assert folder.parent == tmp_path / "backups" / NAME
    for path in (tmp_path / "backups", folder.parent, folder):
        assert oct(path.stat().st_mode)[-3:] == "700", path
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["server_name"] == NAME and manifest["synapse_version"] and manifest["database"] == "postgres"
    assert sorted(manifest["files"]) == ["config.tar", "database.dump", "media.tar", "secrets.yaml", "signing.key"]
    for name, entry in manifest["files"].items():
        part = folder / name
        assert (part.stat().st_size, sha256(part)) == (entry["size"], entry["sha256"]), name
        assert oct(part.stat().st_mode)[-3:] == "600", name
    on_host = deployed.ssh("hs2", f"cd /etc/matrix-synapse/{NAME} && sha256sum signing.key secrets.yaml").stdout
    assert on_host.split()[::2] == [sha256(folder / "signing.key"), sha256(folder / "secrets.yaml")]
    assert (folder / "database.dump").read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format
    media_id = traces["mxc"].rsplit("/", 1)[1]
    with tarfile.open(folder / "media.tar") as media:
        names = media.getnames()
        uploaded = [n for n in names if n.startswith("local_content/") and n.endswith(media_id[4:])]
        assert uploaded, names
        assert hashlib.sha256(media.extractfile(uploaded[0]).read()).hexdigest() == traces["sha256"]
        assert not [n for n in names if n.startswith("remote_")]
    with tarfile.open(folder / "config.tar") as config:
        assert config.getnames() == ["homeserver.yaml"]
    assert "registration_shared_secret" not in result.stdout + result.stderr  # nothing secret printed


def test_unknown_server_is_a_clear_error(deployed, tmp_path):
    result = federate("backup", deployed.inventory, "--server", "nope.test", "--to", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.startswith("federate: --server nope.test: no such homeserver in ")
    assert "Traceback" not in result.stderr
