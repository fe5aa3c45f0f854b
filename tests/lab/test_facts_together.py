"""Facts read together (federate.pyinfra_ext.factcache) on the real hosts of the shared lab (hs1
Debian 12, hs2 Debian 13, after the deploy): what each fold of many facts into one command gives
is what pyinfra's own facts give asked one by one, and the facts that read files in place of
running a program (ufw, the venv's Python) give what that program says."""

from __future__ import annotations

import pytest
from pyinfra import host
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.context import ctx_host, ctx_state
from pyinfra.facts.postgres import PostgresDatabases, PostgresRoles
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from federate.deploy import paths
from federate.deploy.database import PSQL_AS_POSTGRES
from federate.deploy.firewall.ufw import UfwState
from federate.deploy.venv import VenvDistributions, installed_synapse
from federate.pyinfra_ext import factcache
from federate.pyinfra_ext.declared import PSQL_DEFAULTS
from federate.pyinfra_ext.factcache import read_together
from federate.pyinfra_ext.facts import system_unit

pytestmark = pytest.mark.lab


@pytest.fixture(params=["hs1", "hs2"])
def connected(request, deployed):
    """A pyinfra state connected over SSH to one lab host, as a deploy's is."""
    name = request.param
    data = {"ssh_user": "root", "ssh_key": deployed.info["ssh_key"], "ssh_known_hosts_file": deployed.info["known_hosts"],
            "ssh_strict_host_key_checking": "yes"}
    inventory = Inventory(([(deployed.address(name), data)], {}))
    state = State(inventory, Config(), check_for_changes=False)
    connect_all(state)
    try:
        with ctx_state.use(state), ctx_host.use(inventory.get_host(deployed.address(name))):
            yield deployed, name
    finally:
        disconnect_all(state)
        for kept in (factcache._known, factcache._wanted, factcache._last_op, factcache._defaults):
            kept.clear()


def together_and_alone(asked: list) -> tuple[list, list]:
    """Each fact of `asked` ((class, kwargs, connector)) as read together, then asked alone."""
    read_together(asked)
    known = factcache._known[host.name]
    assert len(known) == len(asked), "a fact read together was not kept"
    together = [host.get_fact(cls, **kwargs, **connector) for cls, kwargs, connector in asked]
    factcache._known.clear()
    return together, [host.get_fact(cls, **kwargs, **connector) for cls, kwargs, connector in asked]


def test_units_and_databases_read_together_are_what_pyinfra_says_of_each(connected):
    lab, name = connected
    synapse_units = lab.ssh(name, "systemctl list-units --all --plain --no-legend 'matrix-synapse*' | cut -d' ' -f1").stdout.split()
    units = [*synapse_units, "nginx.service", "postgresql.service", "certbot.timer", "sshd.service",
             "federate-no-such.service"]
    asked = [(cls, system_unit(unit), {})
             for unit in units for cls in (SystemdStatus, SystemdEnabled)]
    asked += [(PostgresRoles, PSQL_DEFAULTS, PSQL_AS_POSTGRES), (PostgresDatabases, PSQL_DEFAULTS, PSQL_AS_POSTGRES)]
    together, alone = together_and_alone(asked)
    assert together == alone
    status = {unit: together[2 * i] for i, unit in enumerate(units)}
    assert status[synapse_units[0]] == {synapse_units[0]: True}  # running
    assert status["sshd.service"] == {"ssh.service": True}  # an alias: answered by the unit it names
    assert status["federate-no-such.service"] == {"federate-no-such.service": False}
    assert any(role.startswith("synapse_") for role in together[-2]) and "template0" in together[-1]


def test_ufw_read_from_its_files_is_what_ufw_says(connected):
    lab, name = connected
    read_together([(UfwState, {})])
    state = host.get_fact(UfwState)
    status = lab.ssh(name, "ufw status | head -n 1").stdout.strip()
    shown = [line[len("ufw "):] for line in lab.ssh(name, "ufw show added").stdout.splitlines()
             if line.startswith("ufw ")]
    assert state["active"] == (status == "Status: active") and state["active"]
    assert state["rules"] == shown and "allow 8448/tcp" in shown


def test_the_venv_read_from_its_metadata_is_what_its_python_says(connected):
    lab, name = connected
    script = "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'], d.version)"
    python = lab.ssh(name, f"{paths.VENV}/bin/python -I -c \"{script}\"").stdout.splitlines()
    read_together([(VenvDistributions, {"venv": paths.VENV})])
    installed = host.get_fact(VenvDistributions, venv=paths.VENV)
    assert installed == VenvDistributions().process(python) and len(installed) > 50
    version = lab.ssh(name, f"{paths.VENV}/bin/python -c 'import synapse; print(synapse.__version__)'").stdout.strip()
    assert installed_synapse(paths.VENV) == version  # what Synapse itself says it is
