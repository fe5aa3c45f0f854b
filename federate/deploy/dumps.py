"""A dump of every homeserver's database before Synapse's version changes.

A new Synapse migrates its database schema on start, and those migrations cannot be undone: the
run that changes `synapse_version` first dumps each database on the host (PostgreSQL's custom
format, or a SQLite copy through SQLite's online backup), into a root-only directory, and keeps the
last few per homeserver.
"""

from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import StringCommand, deploy, operation

from federate.deploy import paths
from federate.deploy.database import database_ref
from federate.deploy.venv import installed_synapse
from federate.settings import HostSettings

DUMPS_ROOT = "/var/backups/federate"
KEEP = 3  # dumps kept per homeserver

SQLITE_BACKUP = ("import sqlite3, sys; source = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True); "
                 "target = sqlite3.connect(sys.argv[2]); source.backup(target); target.close()")


def dump_dir(server_name: str) -> str:
    return f"{DUMPS_ROOT}/{server_name}"


def dump_command(database: str, server_name: str, version: str) -> str:
    """Shell that writes one dump (complete or not at all) and keeps the newest KEEP."""
    kind, _, name = database.partition(":")
    folder = shlex.quote(dump_dir(server_name))
    target = f"{folder}/{shlex.quote(server_name)}-{shlex.quote(version)}-$(date -u +%Y%m%dT%H%M%SZ)"
    if kind == "postgres":
        target += ".dump"
        write = f"runuser -u postgres -- pg_dump -Fc {shlex.quote(name)} > \"$t.part\""
    else:
        target += ".db"
        # a homeserver added in this run has no database until Synapse first starts: nothing to keep
        write = (f"{{ [ ! -e {shlex.quote(name)} ] || python3 -c {shlex.quote(SQLITE_BACKUP)} {shlex.quote(name)} "
                 f"\"$t.part\"; }}")
    # a cut or failed dump leaves no partial file behind
    return (f"install -d -m 700 -o root -g root {shlex.quote(DUMPS_ROOT)} {folder} && t={target} && umask 077 && "
            f"trap 'rm -f \"$t.part\"' EXIT && {write} && {{ [ ! -e \"$t.part\" ] || mv \"$t.part\" \"$t\"; }} && "
            f"ls -1t {folder}/*.dump {folder}/*.db 2>/dev/null | tail -n +{KEEP + 1} | xargs -r rm -f --")


@operation()
def database_dumped(database: str, server_name: str, version: str):
    yield StringCommand(dump_command(database, server_name, version))


@deploy("Databases dumped before the Synapse version changes")
def before_version_change(settings: HostSettings):
    installed = installed_synapse(paths.VENV)
    if installed in (None, settings.synapse_version):
        return
    logger.warning(f"[{host.name}] Synapse {installed} -> {settings.synapse_version}: each database is dumped first, "
                   f"to {DUMPS_ROOT}/<server_name>/ (root only; the last {KEEP} kept)")
    for hs in host.loop(settings.homeservers):
        database_dumped(name=f"{hs.server_name}: database dumped (Synapse {installed})",
                        database=database_ref(settings, hs), server_name=hs.server_name, version=installed)
