"""Issue: the first vertical slice, deployed on real lab hosts and observed from outside."""

from __future__ import annotations


import pytest
import yaml

from federate.lab import prove
from federate.checker.http import https_get

from packaging.utils import canonicalize_name

from federate.deploy import locks
from federate.deploy.debian import BOOKWORM, TRIXIE
from federate.host_data import SYNAPSE_VERSION
from federate.lab.runner import assert_converged, run_deploy, write_inventory
from conftest import open_ports

pytestmark = pytest.mark.lab


def test_remote_checks_pass(deployed):
    checks = prove.prove(deployed.info)
    failed = [c.line() for c in checks if not c.ok]
    assert not failed, "\n".join(failed)
    # 2 well-known + version + keys for each external server, the room across hosts, beta.test's
    # federation through its workers, and the internal server's policy: a room with its partner, and
    # an invite, profile lookup and join refused
    assert len(checks) == 4 * 2 + 1 + 1 + 4
    assert any(c.name == "beta.test: federation through its workers" for c in checks)


def test_well_known_is_never_a_redirect_and_admin_api_is_closed(deployed):
    info = deployed.info
    reply = https_get("alpha.test", 443, "/.well-known/matrix/server", ca_file=info["ca_file"], dns_server=info["dns"])
    assert reply.status == 200
    admin = https_get("matrix.alpha.test", 443, "/_synapse/admin/v1/server_version",
                      ca_file=info["ca_file"], dns_server=info["dns"])
    assert admin.status == 404
    unknown = https_get("matrix.alpha.test", 443, "/nothing-here", ca_file=info["ca_file"], dns_server=info["dns"])
    assert unknown.status == 404


@pytest.mark.parametrize("host", ["hs1", "hs2"])
def test_only_ssh_and_web_ports_are_open(deployed, host):
    assert open_ports(deployed.address(host)) == {22, 80, 443, 8448}
    # Synapse itself listens, but only on loopback inside the host.
    listening = deployed.ssh(host, "ss -Hltn 'sport = :8008'").stdout
    assert "127.0.0.1:8008" in listening


def test_services_and_file_modes(deployed):
    for host, names in (("hs1", ["alpha.test", "internal.alpha.test"]), ("hs2", ["beta.test"])):
        for name in names:
            assert deployed.ssh(host, f"systemctl is-active matrix-synapse@{name}.service").stdout.strip() == "active"
            assert deployed.ssh(host, f"systemctl is-enabled matrix-synapse@{name}.service").stdout.strip() == "enabled"
            modes = deployed.ssh(host, f"stat -c '%n %a %U' /etc/matrix-synapse/{name}/* "
                                       f"/etc/matrix-synapse/{name} /var/lib/matrix-synapse/{name}").stdout
            for line in modes.splitlines():
                path, mode, owner = line.split()
                assert owner == "synapse_" + name.replace(".", "_"), line  # its own user
                assert mode in ("600", "700"), line
            config = yaml.safe_load(deployed.ssh(host, f"cat /etc/matrix-synapse/{name}/homeserver.yaml").stdout)
            assert "macaroon_secret_key" not in config and "registration_shared_secret" not in config
        assert deployed.ssh(host, "systemctl is-active nginx").stdout.strip() == "active"
        # the sites suit each release's nginx (1.22 on hs1, 1.26 on hs2): no deprecation warning
        assert "[warn]" not in deployed.ssh(host, "nginx -t 2>&1").stdout
        assert "Status: active" in deployed.ssh(host, "ufw status").stdout


def test_second_run_changes_nothing(deployed):
    deployed.noop_rerun()


def venv_packages(deployed, host: str) -> dict[str, str]:
    """{canonical name: version} of Synapse's venv, as pip freeze sees it (pip itself left out)."""
    frozen = deployed.ssh(host, "/opt/matrix-synapse/venv/bin/python -m pip freeze --all --exclude pip").stdout
    return {canonicalize_name(n): v for n, v in (line.split("==") for line in frozen.split())}


@pytest.mark.parametrize("host, release", [("hs1", BOOKWORM), ("hs2", TRIXIE)], ids=["debian12", "debian13"])
def test_the_venv_holds_exactly_the_lock_of_its_python(deployed, host, release):
    """Both releases' venvs: every package at the version the shipped lock pins, nothing else, and
    the lock itself on the host beside the venv (README, 'Pinned dependencies')."""
    lock = locks.shipped(SYNAPSE_VERSION, release.python, redis=deployed.runs_workers(host))
    assert deployed.ssh(host, "/opt/matrix-synapse/venv/bin/python -V").stdout.startswith(f"Python {release.python}.")
    assert deployed.ssh(host, "cat /opt/matrix-synapse/requirements.txt").stdout == lock
    assert venv_packages(deployed, host) == locks.pins(lock)
    # the PostgreSQL driver is the locked binary wheel, with its own libpq
    libpq = deployed.ssh(host, "/opt/matrix-synapse/venv/bin/python -c "
                               "'import psycopg2; print(psycopg2.__libpq_version__)'").stdout
    assert int(libpq) >= 170000, libpq


def test_a_version_without_a_lock_warns_and_its_lock_is_installed_again(deployed, tmp_path):
    """No lock for 1.163.1: the run warns, names the command, installs the top-level pins; back on
    the default version, the venv is exactly its lock again. Each state converges."""
    def older(hosts):
        dict(hosts)["hs2"]["synapse_version"] = "1.163.1"
    for inventory, version in ((write_inventory(tmp_path / "inventory.py", deployed.inventory, older), "1.163.1"),
                               (deployed.inventory, SYNAPSE_VERSION)):
        result = run_deploy(inventory, "--json")
        assert result.returncode == 0, result.stderr[-3000:]
        if version == "1.163.1":
            assert f"hs2: synapse_version 1.163.1 has no lock for Python {TRIXIE.python}" in result.stderr
            assert "federate synapse-lock 1.163.1" in result.stderr
        else:
            assert "has no lock" not in result.stderr
        assert venv_packages(deployed, "hs2")["matrix-synapse"] == version
        assert_converged(inventory)
    assert venv_packages(deployed, "hs2") == locks.pins(locks.shipped(SYNAPSE_VERSION, TRIXIE.python,
                                                                      redis=deployed.runs_workers("hs2")))


def test_signing_key_survives_a_rerun(deployed):
    before = deployed.ssh("hs2", "sha256sum /etc/matrix-synapse/beta.test/signing.key "
                                 "/etc/matrix-synapse/beta.test/secrets.yaml").stdout
    assert run_deploy(deployed.inventory).returncode == 0
    after = deployed.ssh("hs2", "sha256sum /etc/matrix-synapse/beta.test/signing.key "
                                "/etc/matrix-synapse/beta.test/secrets.yaml").stdout
    assert before == after

