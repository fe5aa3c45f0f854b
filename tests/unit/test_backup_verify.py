"""`federate backup --verify` on real backup folders built here (SQLite, a real signing key, real tars),
run through the installed `federate` command: every check passes on a whole backup, and each kind of
damage stops it with one `federate:` line naming the file, exit 1 and no traceback."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from signedjson.key import generate_signing_key, write_signing_keys

FEDERATE = str(Path(sys.executable).parent / "federate")
NAME = "g.test"
SECRETS = {"registration_shared_secret": "reg-s3cret", "macaroon_secret_key": "mac-s3cret",
           "form_secret": "form-s3cret"}


def tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def write_manifest(folder: Path) -> None:
    """The manifest `federate backup` writes, with the sizes and sha256 of the files as they are now."""
    files = {p.name: {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in sorted(folder.iterdir()) if p.name != "manifest.json"}
    (folder / "manifest.json").write_text(json.dumps(
        {"format": 1, "server_name": NAME, "host": "h1", "synapse_version": "1.120.0", "database": "sqlite",
         "created": "20261130T170000Z", "files": files}, indent=2))


@pytest.fixture
def folder(tmp_path) -> Path:
    folder = tmp_path / "backups" / NAME / "20261130T170000Z"
    folder.mkdir(parents=True)
    with sqlite3.connect(folder / "database.sqlite") as db:
        for table, rows in (("users", 2), ("rooms", 3), ("events", 5)):
            db.execute(f"CREATE TABLE {table} (id INTEGER)")
            db.executemany(f"INSERT INTO {table} VALUES (?)", [(n,) for n in range(rows)])
    db.close()
    key = generate_signing_key("a_abcd")
    with open(folder / "signing.key", "w") as out:
        write_signing_keys(out, [key])
    (folder / "secrets.yaml").write_text(yaml.safe_dump(SECRETS))
    tar(folder / "media.tar", {"local_content/ab/cd/efgh": b"x" * 2048, "local_thumbnails/ab/cd/efgh/32-32": b"t"})
    tar(folder / "config.tar", {"homeserver.yaml": yaml.safe_dump({"server_name": NAME}).encode()})
    write_manifest(folder)
    return folder


def secret_texts(folder: Path) -> list[str]:
    """What must never be printed: the secrets' values and the signing key itself."""
    return [*SECRETS.values(), (folder / "signing.key").read_text().split()[2]]


def verify(folder: Path, *extra: str) -> subprocess.CompletedProcess:
    # INVENTORY is only read for a PostgreSQL dump (to reach its homeserver's host): none is needed here
    return subprocess.run([FEDERATE, "backup", str(folder.parent / "no-inventory.py"), "--verify", str(folder),
                           *extra], text=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)


def test_a_whole_backup_passes_every_check(folder):
    before, secret = sorted((p.name, p.read_bytes()) for p in folder.iterdir()), secret_texts(folder)
    result = verify(folder)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert [line.split(":")[1].strip() for line in lines[:-1]] == [
        "manifest", "signing.key", "secrets.yaml", "media.tar", "config.tar", "database"]
    assert all(line.startswith("ok: ") for line in lines[:-1])
    assert "ok: signing.key: ed25519:a_abcd" in lines
    assert "ok: media.tar: 2 files" in result.stderr
    assert "SQLite integrity ok: 2 users, 3 rooms, 5 events" in result.stderr
    backup_id = hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    assert lines[-1].endswith(f"every check passed (backup id sha256:{backup_id})")
    assert not [text for text in secret if text in result.stdout + result.stderr]
    assert sorted((p.name, p.read_bytes()) for p in folder.iterdir()) == before  # verify changes nothing


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def rewrite(path: Path, data: bytes) -> None:
    """A change the manifest agrees with: only the content check can find it."""
    path.write_bytes(data)
    write_manifest(path.parent)


def no_macaroon(folder: Path) -> None:
    rewrite(folder / "secrets.yaml", yaml.safe_dump({k: v for k, v in SECRETS.items()
                                                     if k != "macaroon_secret_key"}).encode())


def other_config(folder: Path) -> None:
    tar(folder / "config.tar", {"homeserver.yaml": b"server_name: other.test\n"})
    write_manifest(folder)


DAMAGE = {
    "flipped byte in media.tar": (lambda f: flip_byte(f / "media.tar"),
                                  "media.tar: sha256 differs from the manifest's"),
    "missing signing.key": (lambda f: (f / "signing.key").unlink(), "signing.key: missing"),
    "no manifest": (lambda f: (f / "manifest.json").unlink(), "no manifest.json"),
    "secrets without macaroon_secret_key": (no_macaroon, "secrets.yaml: no macaroon_secret_key"),
    "signing key that is not one": (lambda f: rewrite(f / "signing.key", b"ed25519 a_abcd notbase64!\n"),
                                    "signing.key: not a Synapse signing key"),
    "config of another homeserver": (other_config, "homeserver.yaml's server_name is 'other.test'"),
    "media that is no tar": (lambda f: rewrite(f / "media.tar", b"\x00garbage" * 100),
                             "media.tar: not a readable tar archive"),
    "database that is no SQLite": (lambda f: rewrite(f / "database.sqlite", b"not a database" * 100),
                                   "database.sqlite: file is not a database"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damage_stops_at_the_file_that_has_it(folder, damage):
    harm, expected = DAMAGE[damage]
    secret = secret_texts(folder)
    harm(folder)
    result = verify(folder)
    assert result.returncode == 1, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"federate: {folder}") and expected in last, result.stderr
    assert "Traceback" not in result.stderr
    assert not [text for text in secret if text in result.stderr]


def test_postgres_backup_of_a_homeserver_the_inventory_lacks(folder, tmp_path):
    manifest = json.loads((folder / "manifest.json").read_text())
    os.rename(folder / "database.sqlite", folder / "database.dump")
    manifest["database"] = "postgres"
    manifest["files"]["database.dump"] = manifest["files"].pop("database.sqlite")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    inventory = tmp_path / "inventory.py"
    inventory.write_text("hosts = [('h1.invalid', {'homeservers': [{'server_name': 'other.test'}]})]\n")
    result = subprocess.run([FEDERATE, "backup", str(inventory), "--verify", str(folder)], text=True,
                            capture_output=True, stdin=subprocess.DEVNULL, timeout=120, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"federate: {inventory}: no homeserver {NAME} (the backup's), whose host's PostgreSQL would restore "
        f"its database.dump (the inventory has: other.test)")


def test_to_or_verify_one_of_them(folder):
    neither = subprocess.run([FEDERATE, "backup", "inventory.py"], text=True, capture_output=True)
    both = verify(folder, "--to", str(folder.parent))
    for result in (neither, both):
        assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "one of the arguments --to --verify is required" in neither.stderr
    assert "not allowed with argument" in both.stderr
    with_server = verify(folder, "--server", NAME)
    assert with_server.returncode == 1
    assert with_server.stderr.startswith("federate: --server: only with --to")
