"""Issue (security domains), the sandbox and own-user parts: every homeserver's unit rates at most 2.5 in
`systemd-analyze security` on Debian 12 and 13, and its process sees only its own directories:
the other homeserver's config (signing key, secrets) and data are not there at all, and nothing
but its own data directory is writable. Federation, media and user creation under this sandbox
are proven by the other suites of the shared lab (its units are sandboxed from the first deploy).
Each homeserver runs as its own OS user, which can reach neither the other's files nor its database.
"""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.lab

UNITS = {"hs1": ["alpha.test", "internal.alpha.test"], "hs2": ["beta.test"]}
LIMIT = 2.5


def exposure(deployed, host: str, name: str) -> float:
    report = deployed.ssh(host, f"systemd-analyze security --no-pager matrix-synapse@{name}.service",
                          check=False).stdout
    found = re.search(r"Overall exposure level for matrix-synapse@\S+: ([0-9.]+)", report)
    assert found, report[-2000:]
    return float(found.group(1))


def main_pid(deployed, host: str, name: str) -> str:
    pid = deployed.ssh(host, f"systemctl show -p MainPID --value matrix-synapse@{name}").stdout.strip()
    assert pid not in ("", "0"), f"{name} is not running"
    return pid


@pytest.mark.parametrize("host,name", [(h, n) for h, names in UNITS.items() for n in names])
def test_every_homeserver_unit_rates_at_most_2_5(deployed, host, name):
    level = exposure(deployed, host, name)
    deployed.timings[f"exposure {name}"] = level
    assert level <= LIMIT, f"matrix-synapse@{name}: exposure {level}"


def test_a_homeserver_sees_only_its_own_directories(deployed):
    for name, other in (("alpha.test", "internal.alpha.test"), ("internal.alpha.test", "alpha.test")):
        inside = f"nsenter -t {main_pid(deployed, 'hs1', name)} -m"
        assert deployed.ssh("hs1", f"{inside} ls /etc/matrix-synapse").stdout.split() == [name]
        assert deployed.ssh("hs1", f"{inside} ls /var/lib/matrix-synapse").stdout.split() == [name]
        hidden = deployed.ssh("hs1", f"{inside} cat /etc/matrix-synapse/{other}/signing.key", check=False)
        assert hidden.returncode != 0 and "No such file" in hidden.stderr
        assert deployed.ssh("hs1", f"{inside} test -s /etc/matrix-synapse/{name}/signing.key").returncode == 0


def test_only_its_own_data_directory_is_writable(deployed):
    inside = f"nsenter -t {main_pid(deployed, 'hs2', 'beta.test')} -m"
    for path in ("/etc/matrix-synapse/beta.test", "/opt/matrix-synapse/venv", "/usr/local", "/var/tmp/.."):
        refused = deployed.ssh("hs2", f"{inside} touch {path}/federate-probe", check=False)
        assert refused.returncode != 0 and "Read-only file system" in refused.stderr, (path, refused.stderr)
    probe = "/var/lib/matrix-synapse/beta.test/federate-probe"
    deployed.ssh("hs2", f"{inside} sh -c 'touch {probe} && rm {probe}'")


def test_the_process_has_no_capabilities_and_no_new_privileges(deployed):
    status = deployed.ssh("hs2", f"cat /proc/{main_pid(deployed, 'hs2', 'beta.test')}/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["CapEff"].strip() == fields["CapBnd"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # a system call filter is active


# each homeserver's OS user, which is also the name of its PostgreSQL role and database
USER = {"alpha.test": "synapse_alpha_test", "internal.alpha.test": "synapse_internal_alpha_test"}


@pytest.mark.parametrize("own,other", [("alpha.test", "internal.alpha.test"), ("internal.alpha.test", "alpha.test")])
def test_a_homeservers_user_cannot_reach_the_others_files_or_database(deployed, own, other):
    """As the OS user of one homeserver (what a break-in gets): the other's key, secrets, config,
    media and database are out of reach; its own still work."""
    user, other_role = USER[own], USER[other]
    as_user = f"runuser -u {user} --"
    for path in (f"/etc/matrix-synapse/{other}/signing.key", f"/etc/matrix-synapse/{other}/secrets.yaml",
                 f"/etc/matrix-synapse/{other}/homeserver.yaml"):
        read = deployed.ssh("hs1", f"cd / && {as_user} cat {path}", check=False)
        assert read.returncode != 0 and "Permission denied" in read.stderr, (path, read.stderr)
    listing = deployed.ssh("hs1", f"cd / && {as_user} ls /var/lib/matrix-synapse/{other}", check=False)
    assert listing.returncode != 0 and "Permission denied" in listing.stderr
    psql = f"cd / && {as_user} psql -h /var/run/postgresql -Atc 'SELECT 1'"
    refused = deployed.ssh("hs1", f"{psql} -U {other_role} -d {other_role}", check=False)
    assert refused.returncode != 0 and "Peer authentication failed" in refused.stderr, refused.stderr
    assert deployed.ssh("hs1", f"{psql} -U {user} -d {user}").stdout.strip() == "1"
    assert deployed.ssh("hs1", f"cd / && {as_user} test -r /etc/matrix-synapse/{own}/signing.key").returncode == 0
    running_as = deployed.ssh("hs1", f"ps -o user= -p {main_pid(deployed, 'hs1', own)}").stdout.strip()
    assert running_as == user
    assert deployed.ssh("hs1", "id matrix-synapse", check=False).returncode != 0  # no shared user is left
