"""Restore: a homeserver comes back on a host (a new one, or its old one rebuilt) from a backup of
`federate backup`, named by its `restore_from` setting.

The restore runs only where the homeserver has no data yet: after its fresh database is created as
Synapse requires and before Synapse first starts, so Synapse never makes a new identity. The
database is restored in one transaction, then the host records which backup it holds; later runs
with the same `restore_from` change nothing. A restore over a database that holds data (or next to
another signing key) is refused while planning, before any host is touched.
"""

from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import FactBase, deploy
from pyinfra.operations import files, server

from federate.deploy import paths
from federate.deploy.database import sqlite_path
from federate.manifest import BackupError, database_part, read_manifest
from federate.pyinfra_ext import declared
from federate.settings import Homeserver, HostSettings

STATE_ROOT = "/var/lib/federate"
RESTORED_ROOT = f"{STATE_ROOT}/restored"  # one file per homeserver: the id of the backup it came from
STAGING_ROOT = f"{STATE_ROOT}/restore"    # root-only; on disk, not /run (a media store can be large)
PARTS = ("signing.key", "secrets.yaml", "media.tar")  # beside the database; homeserver.yaml is rendered anew


def marker(server_name: str) -> str:
    return f"{RESTORED_ROOT}/{server_name}"


def staging(server_name: str) -> str:
    return f"{STAGING_ROOT}/{server_name}"


class HomeserverDataState(FactBase):
    """Which backup a homeserver was restored from (or ''), whether its database holds data, and
    the sha256 of its signing key (or '')."""

    def command(self, server_name: str, database: str, sqlite: str | None) -> str:
        if sqlite is None:
            query = shlex.quote("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            tables = (f"runuser -u postgres -- psql -Atc {query} -d {shlex.quote(database)} 2>/dev/null "
                      f"|| echo 0")
        else:
            tables = f"if [ -s {shlex.quote(sqlite)} ]; then echo 1; else echo 0; fi"
        key = shlex.quote(paths.signing_key(server_name))
        return (f"echo \"restored=$(cat {shlex.quote(marker(server_name))} 2>/dev/null)\"; "
                f"echo \"tables=$({tables})\"; "
                f"echo \"key=$(sha256sum {key} 2>/dev/null | cut -d' ' -f1)\"")

    def process(self, output):
        values = dict(line.split("=", 1) for line in output if "=" in line)
        return {"restored": values.get("restored", "").strip(), "has_data": values.get("tables", "0").strip() not in
                ("", "0"), "key_sha256": values.get("key", "").strip()}


def state_arguments(settings: HostSettings, hs: Homeserver) -> dict:
    sqlite = sqlite_path(hs) if settings.database == "sqlite" else None
    return {"server_name": hs.server_name, "database": hs.database_name, "sqlite": sqlite}


def _state(settings: HostSettings, hs: Homeserver) -> dict:
    return host.get_fact(HomeserverDataState, **state_arguments(settings, hs))


def _pending(settings: HostSettings, hs: Homeserver) -> bool:
    return hs.restore is not None and _state(settings, hs)["restored"] != hs.restore.backup_id


def _drop_hint(settings: HostSettings, hs: Homeserver) -> str:
    stop = f"systemctl stop {paths.unit(hs.server_name)}"
    if settings.database == "postgres":
        return f"{stop}; runuser -u postgres -- dropdb {hs.database_name}"
    return f"{stop}; rm {sqlite_path(hs)}"


def problem(settings: HostSettings) -> str | None:
    """Why a restore this run asks for must not happen, or None. Checked while planning."""
    for i, hs in enumerate(settings.homeservers):
        if hs.restore is None:
            continue
        state = _state(settings, hs)
        if state["restored"] == hs.restore.backup_id:
            continue
        where = f"host {settings.host}: homeservers[{i}].restore_from"
        if state["has_data"]:
            return (f"{where}: {hs.server_name} already has a database with data on this host, and a restore never "
                    "replaces a live database. To keep it, take restore_from out of the inventory; to replace it "
                    f"on purpose, back it up first, then: {_drop_hint(settings, hs)}; and run again.")
        if state["key_sha256"] and state["key_sha256"] != hs.restore.signing_key_sha256:
            return (f"{where}: {hs.server_name} on this host has a signing key that is not the backup's "
                    f"({paths.signing_key(hs.server_name)}): it is another identity; move it away on purpose "
                    "and run again.")
        try:
            read_manifest(hs.restore.folder, check_hashes=True)
        except BackupError as error:
            return f"{where}: {error}"
    return None


def _restore_script(settings: HostSettings, hs: Homeserver) -> str:
    """One shell run: keys, media, then the database in a single transaction, then the marker. A
    cut before the database commits leaves it empty, so the next run restores again."""
    name, user = hs.server_name, hs.os_user
    owner = f"{user}:{user}"
    here = shlex.quote(staging(name))
    media = shlex.quote(f"{paths.data_dir(name)}/media_store")
    if settings.database == "postgres":
        database = (f"runuser -u postgres -- pg_restore --no-owner --no-privileges --role={hs.database_name} "
                    f"--exit-on-error --single-transaction -d {hs.database_name} < {here}/database.dump")
    else:
        database = f"install -o {user} -g {user} -m 600 {here}/database.sqlite {shlex.quote(sqlite_path(hs))}"
    done = shlex.quote(marker(name))
    return " && ".join([
        "set -e",
        f"install -o {user} -g {user} -m 600 {here}/signing.key {shlex.quote(paths.signing_key(name))}",
        f"install -o {user} -g {user} -m 600 {here}/secrets.yaml {shlex.quote(paths.secrets_yaml(name))}",
        f"tar -xf {here}/media.tar -C {media} --no-same-owner --no-same-permissions",
        f"chown -R {owner} {media}",
        database,
        f"install -d -o root -g root -m 755 {RESTORED_ROOT}",
        f"echo {hs.restore.backup_id} > {done}.tmp",
        f"mv {done}.tmp {done}",
        f"rm -rf {here}",
        f"rmdir --ignore-fail-on-non-empty {STAGING_ROOT}",
    ])


@deploy("Restore from a backup")
def restore(settings: HostSettings, hs: Homeserver):
    """Before Synapse first starts on this host: the backup's database, signing key, secrets and
    local media. Called after the homeserver's user, directories and empty database exist."""
    if not _pending(settings, hs):
        return
    name, folder = hs.server_name, hs.restore.folder
    logger.warning(f"[{host.name}] {name}: restored from {folder} (Synapse {hs.restore.synapse_version}; "
                   f"a newer Synapse migrates its schema when it starts)")
    database = database_part(settings.database)
    declared.directory(name=f"{name}: restore staging dir (root only)", path=staging(name), user="root",
                       group="root", mode="700")
    for part in host.loop((database, *PARTS)):
        files.put(name=f"{name}: {part} from the backup", src=f"{folder}/{part}", dest=f"{staging(name)}/{part}",
                  user="root", group="root", mode="600")
    server.shell(name=f"{name}: database, signing key, secrets and media restored",
                 commands=[_restore_script(settings, hs)])
