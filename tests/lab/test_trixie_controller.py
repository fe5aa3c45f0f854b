"""Issue (Debian 13): a fresh Debian 13 machine can be the controller.

The lab cannot nest its hosts, so a Debian 13 lab host plays the fresh controller as far as one
can: this repository copied in (tracked files only), then the same set-up `make` does on a new
machine — `make` itself from apt as `.ci/run` does, `make system-deps` (every Debian package the
lab needs, by the names the Makefile gives), the venv with `pip install -e '.[test]'` on Python
3.13 and the unit tests (`make unit`). Then the lab's first step on that controller: the apt
sources for bookworm hosts derived from the trixie machine's own sources, and a real bookworm root
file system built from them with mmdebstrap. Booting hosts needs systemd-nspawn outside a
container, which only the real controllers (this machine, CI) do.
"""

from __future__ import annotations

import shlex
import subprocess

import pytest

from conftest import own_lab
from federate.lab.runner import REPO_ROOT

pytestmark = pytest.mark.lab

TOPOLOGY = {"hosts": {"ctl": {"release": "trixie", "homeservers": []}}}
CHECKOUT = "/root/federate"


@pytest.fixture(scope="module")
def controller():
    with own_lab("k", TOPOLOGY) as session:
        yield session.info


def ssh(info: dict, command: str, timeout: int = 900) -> subprocess.CompletedProcess:
    address = info["hosts"]["ctl"]["address"]
    return subprocess.run(
        ["ssh", "-i", info["ssh_key"], "-o", f"UserKnownHostsFile={info['known_hosts']}", "-o", "BatchMode=yes",
         f"root@{address}", command], text=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout)


@pytest.fixture(scope="module")
def checkout(controller):
    """The tracked files of this repository (as a clean clone has them) in the trixie host."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    archive = subprocess.run(["tar", "--null", "-T", "-", "-cf", "-"], cwd=REPO_ROOT, input=files,
                             capture_output=True, check=True).stdout
    address = controller["hosts"]["ctl"]["address"]
    subprocess.run(["ssh", "-i", controller["ssh_key"], "-o", f"UserKnownHostsFile={controller['known_hosts']}",
                    "-o", "BatchMode=yes", f"root@{address}", f"mkdir -p {CHECKOUT} && tar -xf - -C {CHECKOUT}"],
                   input=archive, check=True, capture_output=True, timeout=120)
    return controller


def test_the_host_is_a_fresh_debian_13(controller):
    result = ssh(controller, "cat /etc/debian_version; python3 -V; command -v make || echo no-make")
    assert result.stdout.split()[0].startswith("13.")
    assert "Python 3.13" in result.stdout and "no-make" in result.stdout


def test_make_sets_up_a_debian_13_controller_and_the_unit_tests_pass(checkout):
    """Everything a fresh machine needs, installed by the commands README gives."""
    command = (f"cd {CHECKOUT} && export DEBIAN_FRONTEND=noninteractive && "
               "apt-get update -qq && apt-get install -y -qq make >/dev/null && "
               "make system-deps && make unit")
    result = ssh(checkout, command)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
    tools = ssh(checkout, "for t in systemd-nspawn mmdebstrap dnsmasq pebble tinyproxy zstd nmap ssh ip; do "
                          "command -v $t >/dev/null || echo missing $t; done")
    assert tools.stdout == "", tools.stdout


def test_a_debian_13_controller_builds_bookworm_hosts_from_its_own_sources(checkout):
    """The trixie machine's sources name no bookworm suite: the lab derives them, and mmdebstrap
    builds a bookworm root from them (the same cached rootfs step `federate lab up` runs)."""
    python = f"{CHECKOUT}/.venv/bin/python"
    derive = ("from federate.lab import rootfs;"
              "print('\\n'.join(s.one_line() for s in rootfs.host_sources('bookworm')))")
    derived = ssh(checkout, f"cd {CHECKOUT} && {python} -c {shlex.quote(derive)}")
    assert derived.returncode == 0, derived.stderr[-2000:]
    suites = [line.split()[2] for line in derived.stdout.splitlines()]
    assert suites == ["bookworm", "bookworm-updates", "bookworm-security"], derived.stdout
    build = ("from federate.lab import rootfs;"
             "print(rootfs.ensure_rootfs('bookworm'))")
    built = ssh(checkout, f"cd {CHECKOUT} && {python} -c {shlex.quote(build)} && "
                          "cat /var/cache/federate/rootfs-bookworm/etc/debian_version")
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    assert built.stdout.splitlines()[-1].startswith("12.")
