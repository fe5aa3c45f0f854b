"""Issue 14 (item 1): `federate backup` copies what beta.test needs to come back, from outside.

On the shared lab: bob leaves a room, a message and a file on beta.test; the backup's signing key
and secrets are the host's (by hash), the database dump is a PostgreSQL custom-format archive, the
media archive holds bob's file (local media only), the config archive the homeserver.yaml, the
manifest's sizes and hashes match the files, and everything is private (0600 in 0700).
Item 4: `--verify` restores that backup's dump into a scratch database on hs2 (dropped again) and
names the file of a damaged copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
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


@pytest.fixture(scope="module")
def beta_backup(deployed, tmp_path_factory):
    """One backup of beta.test after bob left traces on it, for every test here: (traces, run, folder)."""
    info = deployed.info
    bob = prove.accounts(prove.load_settings(deployed.inventory))[NAME]
    traces = asyncio.run(leave_traces(bob, info["dns"], info["ca_file"]))
    to = tmp_path_factory.mktemp("backup") / "backups"
    result = federate("backup", deployed.inventory, "--server", NAME, "--to", str(to))
    assert result.returncode == 0, result.stderr
    folder = Path(result.stdout.strip())
    assert folder.parent == to / NAME
    return traces, result, folder


def test_backup_holds_what_the_homeserver_needs(deployed, beta_backup):
    traces, result, folder = beta_backup
    for path in (folder.parent.parent, folder.parent, folder):
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


def scratch_databases(deployed) -> list[str]:
    names = deployed.ssh("hs2", "runuser -u postgres -- psql -Atc \"SELECT datname FROM pg_database\"").stdout
    return [name for name in names.split() if name.startswith("federate_verify_")]


def test_verify_restores_the_dump_into_a_scratch_database(deployed, beta_backup, tmp_path):
    """Issue 14 (item 4): the backup restores on hs2's PostgreSQL; a damaged copy is named, not restored."""
    _, _, folder = beta_backup
    result = federate("backup", deployed.inventory, "--verify", str(folder))
    assert result.returncode == 0, result.stderr
    print(result.stderr)  # the counts and the restore's time, for the test log
    key_id = (folder / "signing.key").read_text().split()[:2]
    assert f"ok: signing.key: {':'.join(key_id)}" in result.stderr.splitlines()
    counts = re.search(r"ok: database: restored into a scratch database on hs2 in [0-9.]+s \(dropped again\): "
                       r"(\d+) users, (\d+) rooms, (\d+) events", result.stderr)
    assert counts and all(int(n) > 0 for n in counts.groups()), result.stderr
    assert scratch_databases(deployed) == []
    damaged = tmp_path / folder.name
    shutil.copytree(folder, damaged)
    dump = bytearray((damaged / "database.dump").read_bytes())
    dump[len(dump) // 2] ^= 0xFF
    (damaged / "database.dump").write_bytes(bytes(dump))
    result = federate("backup", deployed.inventory, "--verify", str(damaged))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (f"federate: {damaged}/database.dump: sha256 differs from the "
                                              f"manifest's (damaged or changed)")
    # damage the manifest agrees with (a dump cut short before it was hashed): only the restore finds it,
    # and the scratch database is dropped all the same
    (damaged / "database.dump").write_bytes(bytes(dump[:len(dump) // 2]))
    manifest = json.loads((damaged / "manifest.json").read_text())
    manifest["files"]["database.dump"] = {"size": len(dump) // 2, "sha256": sha256(damaged / "database.dump")}
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    result = federate("backup", deployed.inventory, "--verify", str(damaged))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"federate: {damaged}/database.dump: does not restore: "
                                                     f"host hs2: `runuser ...` failed"), result.stderr
    assert scratch_databases(deployed) == []
