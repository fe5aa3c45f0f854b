"""Issue (security domains), the sandbox part: every homeserver's unit rates at most 2.5 in
`systemd-analyze security` on Debian 12 and 13, and its process sees only its own directories:
the other homeserver's config (signing key, secrets) and data are not there at all, and nothing
but its own data directory is writable. Federation, media and user creation under this sandbox
are proven by the other suites of the shared lab (its units are sandboxed from the first deploy).
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
