"""`federate backup INVENTORY --verify DIR`: does one backup folder hold a homeserver that can come back?

A backup that was never restored is a hope. This reads every part the way a restore would, in the
order that finds cheap damage first: the manifest and each file's size and sha256, the signing key
(it must parse: a lost key means other servers reject the homeserver's new one for a while), the
secrets, both tar archives, and last the database: a SQLite copy is opened and checked here, a
PostgreSQL dump is restored into a scratch database on the host that holds the homeserver (its
PostgreSQL is the one that must read it), counted, and always dropped. One "ok:" line per check;
the first failure is a BackupError naming the file. Nothing secret is printed, only key ids.
"""

from __future__ import annotations

import secrets
import shlex
import shutil
import sqlite3
import tarfile
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Callable

import yaml

from federate.backup import Remote, inventory_hosts
from federate.deploy.synapse import SECRET_KEYS
from federate.manifest import BackupError, backup_id, parts, read_manifest

TABLES = ("users", "rooms", "events")  # counted after a restore: a dump of an empty schema restores too
SCRATCH_PREFIX = "federate_verify_"
AS_POSTGRES = "runuser -u postgres --"


def check_manifest(folder: Path) -> tuple[dict, str]:
    manifest = read_manifest(folder, check_hashes=True)
    missing = [name for name in parts(str(manifest.get("database"))) if name not in manifest["files"]]
    if manifest.get("database") not in ("postgres", "sqlite"):
        missing.append("database kind")
    if not isinstance(manifest.get("server_name"), str) or not manifest["server_name"]:
        missing.append("server_name")
    if missing:
        raise BackupError(f"{folder}/manifest.json: lists no {', '.join(missing)}")
    return manifest, (f"manifest: {manifest.get('server_name')}, Synapse {manifest.get('synapse_version')}, "
                      f"{manifest['database']}, made {manifest.get('created')}; {len(manifest['files'])} files, "
                      f"sizes and sha256 match")


def check_signing_key(path: Path) -> str:
    """The key ids (never the keys) of a Synapse signing key file, read as Synapse reads it."""
    from signedjson.key import read_signing_keys

    try:
        keys = read_signing_keys(line for line in path.read_text().splitlines() if line.strip())
    except (ValueError, TypeError, UnicodeDecodeError) as error:  # signedjson's errors carry no key material
        raise BackupError(f"{path}: not a Synapse signing key ({type(error).__name__})") from None
    if not keys:
        raise BackupError(f"{path}: holds no signing key")
    return f"signing.key: {', '.join(f'{key.alg}:{key.version}' for key in keys)}"


def check_secrets(path: Path) -> str:
    try:
        loaded = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):  # the error would quote the file: keep values out of it
        raise BackupError(f"{path}: not YAML") from None
    if not isinstance(loaded, dict):
        raise BackupError(f"{path}: not a YAML mapping")
    missing = [key for key in SECRET_KEYS if not isinstance(loaded.get(key), str) or not loaded[key]]
    if missing:
        raise BackupError(f"{path}: no {', '.join(missing)}")
    return f"secrets.yaml: {', '.join(SECRET_KEYS)}"


def _members(path: Path) -> list[tarfile.TarInfo]:
    """Every member of a tar archive; none may point outside the folder it is unpacked into."""
    try:
        with tarfile.open(path, "r:") as archive:  # `federate backup` writes plain tar
            members = archive.getmembers()
    except (tarfile.TarError, EOFError) as error:
        raise BackupError(f"{path}: not a readable tar archive ({error})") from None
    unsafe = [m.name for m in members if m.name.startswith("/") or ".." in Path(m.name).parts]
    if unsafe:
        raise BackupError(f"{path}: member {unsafe[0]!r} would unpack outside its folder")
    return members


def check_media(path: Path) -> str:
    files = [m for m in _members(path) if m.isfile()]
    size = sum(m.size for m in files)
    return f"media.tar: {len(files)} files, " + (f"{size / (1 << 20):.1f} MiB" if size >> 20 else f"{size >> 10} KiB")


def check_config(path: Path, server_name: str) -> str:
    members = _members(path)
    with tarfile.open(path, "r:") as archive:
        try:
            config = yaml.safe_load(archive.extractfile("homeserver.yaml"))
        except KeyError:
            raise BackupError(f"{path}: holds no homeserver.yaml") from None
        except yaml.YAMLError:
            raise BackupError(f"{path}: its homeserver.yaml is not YAML") from None
    found = config.get("server_name") if isinstance(config, dict) else None
    if found != server_name:
        raise BackupError(f"{path}: homeserver.yaml's server_name is {found!r}, the manifest's {server_name!r}")
    return f"config.tar: {len(members)} file(s), homeserver.yaml for {server_name}"


def _counts(rows: list[int]) -> str:
    return ", ".join(f"{count} {table}" for count, table in zip(rows, TABLES))


def check_sqlite(path: Path) -> str:
    """Checked on a copy: opening a database may write beside it, and the backup must stay as hashed."""
    with tempfile.TemporaryDirectory(prefix="federate-verify-") as scratch:
        copy = Path(scratch) / "homeserver.db"
        shutil.copyfile(path, copy)
        try:
            with closing(sqlite3.connect(copy)) as db:
                integrity = db.execute("PRAGMA integrity_check").fetchall()
                if integrity != [("ok",)]:
                    raise BackupError(f"{path}: integrity_check: {integrity[0][0]}")
                rows = [db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES]
        except sqlite3.Error as error:
            raise BackupError(f"{path}: {error}") from None
    return f"database: SQLite integrity ok: {_counts(rows)}"


def _postgres(inventory: str, server_name: str) -> tuple[str, dict]:
    """The host (and its SSH data) that holds `server_name` in the inventory."""
    settings, data = inventory_hosts(inventory)
    for host, host_settings in settings.items():
        if any(hs.server_name == server_name for hs in host_settings.homeservers):
            return host, data[host]
    known = ", ".join(hs.server_name for s in settings.values() for hs in s.homeservers) or "none"
    raise BackupError(f"{inventory}: no homeserver {server_name} (the backup's), whose host's PostgreSQL "
                      f"would restore its database.dump (the inventory has: {known})")


def _restore_and_count(remote: Remote, scratch: str, dump: Path) -> list[int]:
    try:
        remote.feed(f"{AS_POSTGRES} pg_restore --no-owner --no-privileges --exit-on-error --single-transaction "
                    f"-d {scratch}", dump)
        query = "SELECT " + ", ".join(f"(SELECT count(*) FROM {table})" for table in TABLES)
        return [int(n) for n in remote.output(f"{AS_POSTGRES} psql -d {scratch} -Atc {shlex.quote(query)}").split("|")]
    except BackupError as error:
        raise BackupError(f"{dump}: does not restore: {error}") from None


def check_postgres(inventory: str, server_name: str, dump: Path) -> str:
    """Restore the dump into a scratch database on the homeserver's host, count, and always drop it
    (`--force`: a restore cut off by ^C may still hold a connection to it)."""
    host, data = _postgres(inventory, server_name)
    scratch = f"{SCRATCH_PREFIX}{secrets.token_hex(6)}"
    remote = Remote(host, data)
    start = time.monotonic()
    try:
        remote.output(f"{AS_POSTGRES} createdb -T template0 -E UTF8 --lc-collate=C --lc-ctype=C {scratch}")
        rows = _restore_and_count(remote, scratch, dump)
    finally:
        try:
            remote.output(f"{AS_POSTGRES} dropdb --if-exists --force {scratch}")
        finally:
            remote.close()
    return (f"database: restored into a scratch database on {host} in {time.monotonic() - start:.1f}s "
            f"(dropped again): {_counts(rows)}")


def verify(inventory: str, folder: Path | str, log: Callable[[str], None]) -> str:
    """Every check of one backup folder, each logged as it passes; its backup id when all pass."""
    folder = Path(folder)
    manifest, line = check_manifest(folder)
    log(f"ok: {line}")
    server_name = manifest.get("server_name")
    for check in (lambda: check_signing_key(folder / "signing.key"),
                  lambda: check_secrets(folder / "secrets.yaml"),
                  lambda: check_media(folder / "media.tar"),
                  lambda: check_config(folder / "config.tar", server_name),
                  lambda: (check_postgres(inventory, server_name, folder / "database.dump")
                           if manifest["database"] == "postgres" else check_sqlite(folder / "database.sqlite"))):
        log(f"ok: {check()}")
    return backup_id(folder)
