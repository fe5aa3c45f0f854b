"""Synapse's database: Debian's PostgreSQL (default) or SQLite.

PostgreSQL gets one role and one database per homeserver (UTF8, C collation and ctype, from
template0, as Synapse requires). Synapse connects over the Unix socket with peer
authentication: a pg_ident map lets each homeserver's own OS user log in as its role and no
other, so there is no database password to generate, store or leak.
"""

from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import FactBase, deploy
from pyinfra.facts.files import File

from federate.deploy import paths
from federate.deploy.debian import Release
from federate.pyinfra_ext import declared
from federate.pyinfra_ext.files import config_file, file_attributes
from federate.pyinfra_ext.owed import changed_or_owed, pending_marker, settled
from federate.settings import Homeserver, HostSettings
from federate.deploy.templating import render

SOCKET_DIR = "/var/run/postgresql"
DEFAULT_PORT = 5432
IDENT_MAP = "federate"
PSQL_AS_POSTGRES = {"_su_user": "postgres"}  # su exists on every Debian host; sudo may not


class PostgresClusters(FactBase):
    """The clusters of Debian's postgresql-common (`pg_lsclusters`): a list of
    {version, name, port}; empty before PostgreSQL is installed."""

    def command(self) -> str:
        return "pg_lsclusters --no-header 2>/dev/null || true"

    @staticmethod
    def default():
        return []

    def process(self, output):
        clusters = []
        for line in output:
            words = line.split()
            if len(words) >= 3 and words[2].isdigit():
                clusters.append({"version": words[0], "name": words[1], "port": int(words[2])})
        return clusters


def cluster_in_use(clusters: list[dict], fresh_version: str) -> tuple[str, str]:
    """(version, name) of the cluster Synapse uses: the one on PostgreSQL's default port, which
    the socket in SOCKET_DIR reaches. A host upgraded to a newer Debian keeps its old cluster
    there (a new release's cluster would get the next port); a fresh host gets the release's."""
    for cluster in clusters:
        if cluster["port"] == DEFAULT_PORT:
            return cluster["version"], cluster["name"]
    return fresh_version, "main"


def _note_older_cluster(version: str, release: Release) -> None:
    """Said on every run until the user moves the cluster: Debian's security support for the
    older PostgreSQL ends with the older release."""
    if version != release.postgresql:
        logger.warning(f"{host.name}: Synapse's databases stay in the PostgreSQL {version} cluster; Debian "
                       f"{release.major} ships PostgreSQL {release.postgresql}. Move them when convenient "
                       "(README, 'Upgrading Debian': pg_upgradecluster, after a backup).")


class PostgresDatabaseExists(FactBase):
    def command(self, database: str) -> str:
        query = f"SELECT 1 FROM pg_database WHERE datname = '{database}'"
        return f"su postgres -c {shlex.quote(f'psql -Atc {shlex.quote(query)}')} 2>/dev/null || true"

    def process(self, output):
        return "".join(output).strip() == "1"


def backend_switch_problem(settings: HostSettings) -> str | None:
    """Why this run would start a homeserver on an empty database next to its real one, or None.

    Checked while planning, so a refused switch changes nothing on any host.
    """
    for i, hs in enumerate(settings.homeservers):
        where = f"host {settings.host}: homeservers[{i}] ({hs.server_name}): database"
        if settings.database == "postgres" and host.get_fact(File, path=sqlite_path(hs)):
            if not host.get_fact(PostgresDatabaseExists, database=hs.database_name):
                return (f"{where}: this homeserver has a SQLite database ({sqlite_path(hs)}); switching to "
                        "postgres would start it on an empty one. Port it first with Synapse's synapse_port_db "
                        "(README, 'Moving from SQLite to PostgreSQL'), or keep database: sqlite.")
        if settings.database == "sqlite" and not host.get_fact(File, path=sqlite_path(hs)):
            if host.get_fact(PostgresDatabaseExists, database=hs.database_name):
                return (f"{where}: this homeserver's data is in PostgreSQL ({hs.database_name}); switching to "
                        "sqlite would start it on an empty database. Keep database: postgres.")
    return None


def packages(settings: HostSettings) -> list[str]:
    return ["postgresql"] if settings.database == "postgres" else []


def database_config(settings: HostSettings, hs: Homeserver) -> dict:
    """The `database` section of homeserver.yaml."""
    if settings.database == "sqlite":
        return {"name": "sqlite3", "args": {"database": sqlite_path(hs)}}
    return {"name": "psycopg2", "args": {
        "user": hs.database_name, "database": hs.database_name, "host": SOCKET_DIR,
        "cp_min": 5, "cp_max": 10,
    }}


def sqlite_path(hs: Homeserver) -> str:
    return f"{paths.data_dir(hs.server_name)}/homeserver.db"


def database_ref(settings: HostSettings, hs: Homeserver) -> str:
    """How the host-side downgrade check finds a homeserver's database."""
    return f"postgres:{hs.database_name}" if settings.database == "postgres" else f"sqlite:{sqlite_path(hs)}"


def driver_requirements() -> list[str]:
    """Extra packages for the venv: the PostgreSQL driver as a wheel (nothing to compile; README,
    "Pinned dependencies", says why not psycopg2 built against Debian's libpq). Locked with
    Synapse and in every venv, whatever the database, so one lock serves every host."""
    return ["psycopg2-binary==2.9.13"]


@deploy("Database")
def configure(settings: HostSettings, release: Release):
    if settings.database != "postgres":
        return
    version, cluster = cluster_in_use(host.get_fact(PostgresClusters), release.postgresql)
    _note_older_cluster(version, release)
    conf = f"/etc/postgresql/{version}/{cluster}"
    roles = [hs.database_name for hs in settings.homeservers]
    reload = pending_marker("reload-postgresql")
    ident = config_file(name="pg_ident.conf: each homeserver's OS user may log in as its own role",
                        dest=f"{conf}/pg_ident.conf", user="postgres", group="postgres", mode="640", owes=reload,
                        content=render("pg_ident.conf.j2", map=IDENT_MAP,
                                       pairs=[(hs.os_user, hs.database_name) for hs in settings.homeservers]))
    hba = config_file(name="pg_hba.conf: peer login through the map for Synapse's databases",
                      dest=f"{conf}/pg_hba.conf", user="postgres", group="postgres", mode="640", owes=reload,
                      content=render("pg_hba.conf.j2", map=IDENT_MAP, roles=roles))
    for path in host.loop([f"{conf}/pg_ident.conf", f"{conf}/pg_hba.conf"]):
        file_attributes(name=f"{path.rsplit('/', 1)[1]} owner and mode", path=path, user="postgres",
                        group="postgres", mode="640")
    declared.service(name="PostgreSQL: reload on change", service="postgresql", running=True,
                     reloaded=True, _if=changed_or_owed([ident, hba], reload))
    settled(name="PostgreSQL: reload done", marker=reload)
    declared.service(name="PostgreSQL: running and enabled", service="postgresql", running=True, enabled=True)
    for hs in host.loop(settings.homeservers):
        declared.postgres_role(name=f"{hs.server_name}: database role", role=hs.database_name, login=True,
                               **PSQL_AS_POSTGRES)
        declared.postgres_database(name=f"{hs.server_name}: database (UTF8, C collation, from template0)",
                                   database=hs.database_name, owner=hs.database_name, encoding="UTF8",
                                   lc_collate="C", lc_ctype="C", template="template0", **PSQL_AS_POSTGRES)
