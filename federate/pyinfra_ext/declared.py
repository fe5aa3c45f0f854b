"""pyinfra's own operations that the deploy uses, declaring the facts they ask (see factcache)."""

from __future__ import annotations

from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import Directory, File, Link
from pyinfra.facts.postgres import PostgresDatabases, PostgresRoles
from pyinfra.facts.server import Groups, Os, Users
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus
from pyinfra.operations import apt, files, postgres, server, systemd

from federate.pyinfra_ext.factcache import asks
from federate.pyinfra_ext.facts import system_unit

UNIT_SUFFIXES = (".service", ".socket", ".device", ".mount", ".automount", ".swap", ".target", ".path", ".timer",
                 ".slice", ".scope")


def _service_facts(service: str, enabled=None, **_) -> list:
    unit = service if service.endswith(UNIT_SUFFIXES) else f"{service}.service"  # as systemd.service names it
    asked = system_unit(unit)
    return [(SystemdStatus, asked), *([(SystemdEnabled, asked)] if isinstance(enabled, bool) else [])]


directory = asks(lambda path, **_: [(Directory, {"path": path})])(files.directory)
file = asks(lambda path, **_: [(File, {"path": path})])(files.file)
link = asks(lambda path, **_: [(Link, {"path": path})])(files.link)
service = asks(_service_facts)(systemd.service)
user = asks(lambda **_: [(Users, {}), (Groups, {}), (Os, {})])(server.user)
packages = asks(lambda **_: [(DebPackages, {})])(apt.packages)
# the connection settings postgres.role and postgres.database pass when given none; their facts
# are asked as the operation's user (`_su_user`), which `asks` carries over
PSQL_DEFAULTS = {"psql_user": None, "psql_password": None, "psql_host": None, "psql_port": None, "psql_database": None}
postgres_role = asks(lambda **_: [(PostgresRoles, PSQL_DEFAULTS)])(postgres.role)
postgres_database = asks(lambda **_: [(PostgresDatabases, PSQL_DEFAULTS)])(postgres.database)
