"""`federate backup`: what a homeserver needs to come back, copied to the controller over SSH.

Per homeserver, as Synapse's backup guidance lists it: the database (`pg_dump -Fc` without the
data of `e2e_one_time_keys_json`, or a SQLite online-backup copy), the signing key, the secrets,
local media (`local_content`, `local_thumbnails`; remote caches are fetched again), the config, and
a manifest (Synapse version, sizes, sha256). Everything is streamed from the host to a file (never
held whole in memory) through the same SSH access the deploy uses; the backup folder is a plain
directory of files and tar archives, private files 0600 in 0700 directories.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from federate.deploy import paths
from federate.deploy.database import sqlite_path
from federate.deploy.dumps import SQLITE_BACKUP  # the same online-backup copy as the dump before upgrades
from federate.manifest import CHUNK, FORMAT, MANIFEST, BackupError, backup_id, file_sha256, read_manifest  # noqa: F401
from federate.settings import Homeserver, HostSettings

PROGRESS_EVERY = 64 << 20  # bytes between progress lines for large media stores

def _pg_dump(database: str) -> str:
    return f"runuser -u postgres -- pg_dump -Fc --exclude-table-data=e2e_one_time_keys_json {shlex.quote(database)}"


def _sqlite_copy(path: str) -> str:
    """An online-backup copy into a root-only temporary file, streamed, then removed."""
    return (f"t=$(mktemp) && python3 -c {shlex.quote(SQLITE_BACKUP)} {shlex.quote(path)} \"$t\" && cat \"$t\"; "
            f"s=$?; rm -f \"$t\"; exit $s")


def _media_tar(hs: Homeserver) -> str:
    """local_content and local_thumbnails of the media store (those that exist), as a tar stream."""
    store = shlex.quote(f"{paths.data_dir(hs.server_name)}/media_store")
    return (f"cd {store} 2>/dev/null || {{ tar -cf - -T /dev/null; exit; }}; "
            f"set -- $(ls -d local_content local_thumbnails 2>/dev/null); "
            f"if [ $# -gt 0 ]; then tar -cf - \"$@\"; else tar -cf - -T /dev/null; fi")


def parts(settings: HostSettings, hs: Homeserver) -> list[tuple[str, str, bool]]:
    """(file name in the backup, shell command that streams it on the host, private) per part."""
    name = hs.server_name
    database = (("database.dump", _pg_dump(hs.database_name)) if settings.database == "postgres"
                else ("database.sqlite", _sqlite_copy(sqlite_path(hs))))
    conf = shlex.quote(paths.conf_dir(name))
    return [
        (*database, True),
        ("signing.key", f"cat {shlex.quote(paths.signing_key(name))}", True),
        ("secrets.yaml", f"cat {shlex.quote(paths.secrets_yaml(name))}", True),
        ("media.tar", _media_tar(hs), True),
        ("config.tar", f"tar -C {conf} -cf - homeserver.yaml", True),
    ]


@dataclass
class Written:
    size: int
    sha256: str


def write_private(path: Path, chunks, progress: Callable[[int], None] | None = None) -> Written:
    """Write `chunks` (bytes) to `path` (0600, complete or not at all), hashing as they pass."""
    digest, size, next_report = hashlib.sha256(), 0, PROGRESS_EVERY
    partial = path.with_name(path.name + ".part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                if progress and size >= next_report:
                    progress(size)
                    next_report += PROGRESS_EVERY
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return Written(size, digest.hexdigest())


class Remote:
    """Commands on one host over SSH (paramiko), with the inventory's connection data."""

    def __init__(self, host: str, data: Mapping[str, Any]):
        import paramiko

        self.host = host
        self.client = paramiko.SSHClient()
        known = data.get("ssh_known_hosts_file")
        self.client.load_system_host_keys()
        if known:
            self.client.load_host_keys(os.path.expanduser(known))
        strict = str(data.get("ssh_strict_host_key_checking", "accept-new")).lower()
        self.client.set_missing_host_key_policy(paramiko.RejectPolicy() if strict == "yes"
                                                else paramiko.WarningPolicy())
        key = data.get("ssh_key")
        try:
            self.client.connect(str(data.get("ssh_hostname") or host), port=int(data.get("ssh_port", 22)),
                                username=data.get("ssh_user"), key_filename=os.path.expanduser(key) if key else None,
                                timeout=30)
        except Exception as error:  # one clear line per host, never a traceback
            raise BackupError(f"host {host}: SSH connection failed: {error}") from None

    def stream(self, command: str):
        """The command's stdout in chunks; BackupError when it exits non-zero."""
        channel = self.client.get_transport().open_session()
        channel.exec_command(command)
        while True:
            chunk = channel.recv(CHUNK)
            if not chunk:
                break
            yield chunk
        self._finish(channel, command)

    def feed(self, command: str, path: Path) -> str:
        """Run `command` with the local file `path` as its stdin, sent in chunks (a dump may be
        larger than memory); its stdout. For commands that print little while they read (the
        channel's window holds what is not yet read). BackupError when it exits non-zero."""
        channel = self.client.get_transport().open_session()
        channel.exec_command(command)
        try:
            with open(path, "rb") as source:
                for chunk in iter(lambda: source.read(CHUNK), b""):
                    channel.sendall(chunk)
            channel.shutdown_write()
        except OSError:  # the command stopped reading (it failed): its status and stderr say why
            pass
        out = b"".join(iter(lambda: channel.recv(CHUNK), b""))
        self._finish(channel, command)
        return out.decode(errors="replace").strip()

    def _finish(self, channel, command: str) -> None:
        status = channel.recv_exit_status()
        errors = b""
        while channel.recv_stderr_ready():
            errors += channel.recv_stderr(CHUNK)
        if status != 0:
            raise BackupError(f"host {self.host}: `{command.split()[0]} ...` failed ({status}): "
                              f"{errors.decode(errors='replace').strip()[-300:]}")

    def output(self, command: str) -> str:
        return b"".join(self.stream(command)).decode().strip()

    def close(self):
        self.client.close()


def backup_homeserver(remote: Remote, settings: HostSettings, hs: Homeserver, to: Path,
                      log: Callable[[str], None]) -> Path:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder = to / hs.server_name / stamp
    folder.mkdir(parents=True, mode=0o700)
    for parent in (to / hs.server_name, to):
        parent.chmod(0o700)
    version = remote.output(f"{paths.VENV}/bin/python -c 'import synapse; print(synapse.__version__)'")
    files = {}
    for name, command, _ in parts(settings, hs):
        log(f"{hs.server_name}: {name} ...")
        written = write_private(folder / name, remote.stream(command),
                                lambda size, n=name: log(f"{hs.server_name}: {n} {size >> 20} MiB so far"))
        files[name] = {"size": written.size, "sha256": written.sha256}
    manifest = {"format": FORMAT, "server_name": hs.server_name, "host": settings.host, "synapse_version": version,
                "database": settings.database, "created": stamp, "files": files}
    write_private(folder / MANIFEST, [json.dumps(manifest, indent=2).encode() + b"\n"])
    return folder


def inventory_hosts(inventory: str) -> tuple[dict[str, HostSettings], dict[str, dict]]:
    """(settings per host, connection data per host) of an inventory: what says which host holds a
    homeserver, and how to reach it over SSH."""
    from federate.inventory import host_data, load_inventory, load_settings

    return load_settings(inventory), dict(host_data(load_inventory(inventory)))


def backup(inventory: str, to: str | Path, server: str | None = None,
           log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> list[Path]:
    settings, data = inventory_hosts(inventory)
    chosen = [(host, hs) for host, s in settings.items() for hs in s.homeservers
              if server is None or hs.server_name == server]
    if not chosen:
        known = ", ".join(hs.server_name for s in settings.values() for hs in s.homeservers)
        raise BackupError(f"--server {server}: no such homeserver in {inventory} (it has: {known})")
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True, mode=0o700)
    done = []
    for host in dict.fromkeys(host for host, _ in chosen):
        remote = Remote(host, data[host])
        try:
            for _, hs in (pair for pair in chosen if pair[0] == host):
                done.append(backup_homeserver(remote, settings[host], hs, to, log))
        finally:
            remote.close()
    return done
