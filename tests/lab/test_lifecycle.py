"""Issue (reliability), on a host of its own: deploys killed at many points converge; an upgrade
keeps data with one restart; a downgrade the database cannot take is refused; a non-22 SSH port
stays open. Everything is observed on the real host and from outside, on Debian 12 and on 13."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time

import pytest
import yaml

from federate.lab import prove
from federate.lab.clients import find_traces, leave_traces
from conftest import own_lab
from federate.lab import Lab
from federate.settings import DEFAULTS
from federate.lab.runner import PYINFRA, REPO_ROOT, assert_converged, run_deploy, write_inventory
from federate.checker.http import https_get

pytestmark = pytest.mark.lab

NEW = DEFAULTS["synapse_version"]
OLD = "1.162.0"       # an earlier release: the upgrade starts here
ANCIENT = "1.80.0"    # schema 74: older than today's databases accept (compat floor 84)
SERVER = "gamma.test"
TOPOLOGY = {"hosts": {"solo": {
    "homeservers": [{"server_name": SERVER, "users": [{"localpart": "erin"}]}],
    # a cut run cannot release its deploy lock: a short lease lets the next run take over in seconds
    "host_data": {"synapse_version": OLD, "lock": {"lease": 10, "wait": 60}},
}}}

# Where to cut a cold deploy: (text of the operation, seconds after it starts). Each run gets
# further than the last, so every point is reached; the kill is SIGKILL to pyinfra's group.
KILL_POINTS = [
    ("System packages | Install", 4.0),        # mid package install (apt/dpkg running)
    ("ACME certificate", 0.5),                  # mid certbot
    (f"matrix-synapse {OLD} in", 5.0),          # mid pip install into the venv
    ("signing key", 0.2),                       # mid key generation
    ("homeserver.yaml", 0.8),                   # mid config write and Synapse's config check
    (f"{SERVER}: site", 0.3),                   # mid proxy site write and nginx -t
]


class Solo:
    def __init__(self, lab: Lab, info: dict):
        self.lab, self.info = lab, info
        self.address = info["hosts"]["solo"]["address"]

    def ssh(self, command: str, port: int = 22) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ssh", "-i", self.info["ssh_key"], "-p", str(port), "-o", f"UserKnownHostsFile={self.info['known_hosts']}",
             "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
             f"root@{self.address}", command], text=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)

    def check(self, command: str) -> str:
        result = self.ssh(command)
        assert result.returncode == 0, f"{command!r}: {result.stderr}{result.stdout}"
        return result.stdout

    def inventory(self, tmp_path, **host_data) -> str:
        def mutate(hosts):
            hosts[0][1].update(host_data)
        return write_inventory(tmp_path / f"inventory-{len(os.listdir(tmp_path))}.py", self.info["inventory"], mutate)

    def account(self):
        return prove.accounts(prove.load_settings(self.info["inventory"]))[SERVER]


@pytest.fixture(scope="module", params=["bookworm", "trixie"])
def solo(request):
    """The solo host, once on Debian 12 and once on Debian 13: every test here runs on both."""
    with own_lab("s", TOPOLOGY, release=request.param) as session:
        yield Solo(session.lab, session.info)


def deploy_killed_at(inventory: str, operation: str, delay: float) -> bool:
    """Run the deploy and SIGKILL it `delay` s after `operation` starts. True if it was killed."""
    process = subprocess.Popen([PYINFRA, inventory, "deploy.py", "-y"], cwd=REPO_ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in process.stdout:
            if "Starting operation" in line and operation in line:
                time.sleep(delay)
                os.killpg(process.pid, signal.SIGKILL)
                return True
        return False
    except BaseException:  # the test itself was interrupted: the deploy must not go on alone
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        raise
    finally:
        process.stdout.close()
        process.wait(timeout=60)


def assert_nothing_half_written(solo: Solo):
    """Whatever a cut left behind, nothing live is half-written."""
    config = solo.ssh(f"cat /etc/matrix-synapse/{SERVER}/homeserver.yaml")
    if config.returncode == 0:
        assert yaml.safe_load(config.stdout)["server_name"] == SERVER
    if solo.ssh("systemctl is-active -q nginx").returncode == 0:  # what nginx serves is valid
        solo.check("nginx -t -q")
    for secret in ("signing.key", "secrets.yaml"):
        present = solo.ssh(f"test -s /etc/matrix-synapse/{SERVER}/{secret}")
        empty = solo.ssh(f"test -e /etc/matrix-synapse/{SERVER}/{secret}")
        assert present.returncode == empty.returncode, f"{secret} exists but is empty"


def test_deploys_cut_at_six_points_converge(solo):
    inventory = solo.info["inventory"]
    killed = []
    for operation, delay in KILL_POINTS:
        if deploy_killed_at(inventory, operation, delay):
            killed.append(operation)
        assert_nothing_half_written(solo)
    assert len(killed) >= 5, killed
    final = run_deploy(inventory)
    assert final.returncode == 0, final.stdout[-4000:]
    assert solo.check(f"systemctl is-active matrix-synapse@{SERVER}").strip() == "active"
    info = solo.info
    reply = https_get(SERVER, 8448, "/_matrix/federation/v1/version", ca_file=info["ca_file"], dns_server=info["dns"])
    assert reply.json()["server"]["version"] == OLD
    assert_converged(inventory)


def test_upgrade_in_place_keeps_data_with_one_restart(solo, tmp_path):
    info = solo.info
    traces = asyncio.run(leave_traces(solo.account(), info["dns"], info["ca_file"]))
    key_before = solo.check(f"sha256sum /etc/matrix-synapse/{SERVER}/signing.key")
    # three dumps of earlier upgrades: the upgrade adds its own and keeps the newest three
    dumps = f"/var/backups/federate/{SERVER}"
    solo.check(f"install -d -m 700 {dumps} && for day in 1 2 3; do touch -d \"$day days ago\" "
               f"{dumps}/{SERVER}-1.0.$day-2026010${{day}}T000000Z.dump; done")
    since = solo.check("date +%s").strip()
    upgraded = solo.inventory(tmp_path, synapse_version=NEW)
    result = run_deploy(upgraded)
    assert result.returncode == 0, result.stdout[-4000:]
    assert f"Synapse {OLD} -> {NEW}: each database is dumped first" in result.stderr
    listing = solo.check(f"stat -c '%a %U' {dumps}; ls -1t {dumps}").split("\n")
    assert listing[0] == "700 root" and len(listing[1:-1]) == 3, listing
    assert listing[1].startswith(f"{SERVER}-{OLD}-") and listing[2:4] == [f"{SERVER}-1.0.1-20260101T000000Z.dump",
                                                                          f"{SERVER}-1.0.2-20260102T000000Z.dump"]
    # the dump is a complete PostgreSQL archive of the homeserver's database, readable by root only
    archive = solo.check(f"stat -c %a {dumps}/{listing[1]}; pg_restore -l {dumps}/{listing[1]}")
    assert archive.startswith("600\n") and "dbname: synapse_gamma_test" in archive and "TABLE DATA public events" in archive
    starts = solo.check(f"journalctl -u matrix-synapse@{SERVER} --since @{since} -o cat | grep -c '^Started ' || true")
    assert starts.strip() == "1"
    reply = https_get(SERVER, 8448, "/_matrix/federation/v1/version", ca_file=info["ca_file"], dns_server=info["dns"])
    assert reply.json()["server"]["version"] == NEW
    bodies, media = asyncio.run(find_traces(solo.account(), info["dns"], info["ca_file"], traces))
    assert "still here" in bodies and media == traces["sha256"]
    assert solo.check(f"sha256sum /etc/matrix-synapse/{SERVER}/signing.key") == key_before
    assert_converged(upgraded)


def test_downgrade_the_database_cannot_take_is_refused(solo, tmp_path):
    result = run_deploy(solo.inventory(tmp_path, synapse_version=ANCIENT))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"downgrade to Synapse {ANCIENT} refused, the database cannot take it" in output, output[-3000:]
    assert "Traceback" not in output
    version = solo.check("/opt/matrix-synapse/venv/bin/python -c 'import synapse; print(synapse.__version__)'")
    assert version.strip() == NEW
    assert solo.check(f"systemctl is-active matrix-synapse@{SERVER}").strip() == "active"


def test_a_venv_made_in_the_background_that_fails_says_why_and_is_made_by_the_next_run(solo, tmp_path):
    """A missing venv is made by a background job while the packages install; when the job fails,
    the run stops with the end of its output (the index's password masked), and the next run
    makes the venv and converges. The failure: root's pip settings name an index that refuses."""
    inventory = solo.inventory(tmp_path, synapse_version=NEW)
    pip_conf = "/root/.config/pip/pip.conf"
    solo.check(f"mkdir -p /root/.config/pip && printf '[global]\\nindex-url = http://federate:sekrit-index@127.0.0.1:9/simple"
               f"\\nretries = 0\\n' > {pip_conf} && rm -rf /opt/matrix-synapse/venv")
    try:
        failed = run_deploy(inventory)
    finally:
        solo.check(f"rm -f {pip_conf}")
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert re.search(r"making Synapse's venv failed \(exit status [1-9]\d*\)", output), output[-4000:]
    assert "127.0.0.1:9" in output and "sekrit-index" not in output, output[-4000:]
    assert solo.check("stat -c '%a %U' /var/lib/federate/venv-install.log").strip() == "600 root"
    result = run_deploy(inventory)
    assert result.returncode == 0, result.stdout[-4000:]
    version = solo.check("/opt/matrix-synapse/venv/bin/python -c 'import synapse; print(synapse.__version__)'")
    assert version.strip() == NEW
    assert solo.check(f"systemctl is-active matrix-synapse@{SERVER}").strip() == "active"
    assert_converged(inventory)


def test_firewall_keeps_a_non_default_ssh_port_open(solo, tmp_path):
    # The admin moves SSH to 2222 and opens it, as they must before connecting on it.
    solo.check("printf 'Port 22\\nPort 2222\\n' > /etc/ssh/sshd_config.d/federate-test.conf"
               " && systemctl restart ssh && ufw allow 2222/tcp")
    known = solo.info["known_hosts"]
    lines = [line for line in open(known).read().splitlines() if line.startswith(solo.address + " ")]
    with open(known, "a") as handle:  # the same host keys, as seen on port 2222
        handle.writelines(f"[{solo.address}]:2222 {line.split(' ', 1)[1]}\n" for line in lines)
    inventory = solo.inventory(tmp_path, synapse_version=NEW, ssh_port=2222)
    result = run_deploy(inventory)
    assert result.returncode == 0, result.stdout[-3000:]
    rules = solo.ssh("ufw show added", port=2222).stdout
    # the deploy's port, rate limited (the lab's controller trusted); nothing left for 22
    assert "ufw limit 2222/tcp" in rules and not re.search(r"\b22/tcp|port 22 ", rules), rules
    assert solo.ssh("true", port=2222).returncode == 0      # the deploy's own port: open
    assert solo.ssh("true", port=22).returncode != 0        # no longer needed: closed
    assert_converged(inventory)
