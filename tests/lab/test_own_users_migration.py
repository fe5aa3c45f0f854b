"""Issue (security domains): a host deployed by the code of before (all homeservers sharing the
OS user `matrix-synapse`, no sandbox) is moved in place by one run of today's code: each
homeserver gets its own user owning its whole tree, PostgreSQL's map lets each user reach only its
own role, every homeserver restarts once, the shared user is gone, and rooms, messages, media,
signing keys and secrets are kept. The code of before is taken from this repository's history.
"""

from __future__ import annotations

import asyncio
import os
import io
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import own_lab
from federate.lab import prove
from federate.lab.clients import find_traces, leave_traces
from federate.lab.runner import PYINFRA, REPO_ROOT, assert_converged, changed_names, run_deploy, write_inventory

pytestmark = pytest.mark.lab

BEFORE = "acc17dc49d8cb101a4b764a5aa1447ae555a61b3"  # main before homeservers got their own users
SERVERS = {"gamma.test": "synapse_gamma_test", "internal.gamma.test": "synapse_internal_gamma_test"}
TOPOLOGY = {"hosts": {"solo": {"release": "bookworm", "homeservers": [
    {"server_name": "gamma.test", "users": [{"localpart": "gina"}]},
    {"server_name": "internal.gamma.test", "profile": "internal", "federation_whitelist": ["gamma.test"],
     "users": [{"localpart": "ian"}]},
]}}}
KEPT = " ".join(f"/etc/matrix-synapse/{name}/{file}" for name in SERVERS for file in ("signing.key", "secrets.yaml"))


@pytest.fixture(scope="module")
def solo(tmp_path_factory):
    with own_lab("m", TOPOLOGY) as session:
        yield session.lab, session.info, tmp_path_factory.mktemp("before")


def ssh(info: dict, command: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["ssh", "-i", info["ssh_key"], "-o", f"UserKnownHostsFile={info['known_hosts']}", "-o", "BatchMode=yes",
         f"root@{info['hosts']['solo']['address']}", command],
        text=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=300)
    if check:
        assert result.returncode == 0, f"{command}: {result.stderr}{result.stdout}"
    return result


def deploy_the_code_of_before(info: dict, checkout) -> subprocess.CompletedProcess:
    """The playbook and library of BEFORE, from git history, run from their own folder."""
    if subprocess.run(["git", "cat-file", "-e", f"{BEFORE}^{{commit}}"], cwd=REPO_ROOT).returncode != 0:
        # a shallow clone: ask the repository it was cloned from for that one commit
        subprocess.run(["git", "fetch", "-q", "--depth=1", "origin", BEFORE], cwd=REPO_ROOT, timeout=300)
    archive = subprocess.run(["git", "archive", BEFORE], cwd=REPO_ROOT, capture_output=True)
    assert archive.returncode == 0, f"commit {BEFORE} is not in this clone's history: {archive.stderr!r}"
    tarfile.open(fileobj=io.BytesIO(archive.stdout)).extractall(checkout, filter="data")
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    probe = subprocess.run([sys.executable, "-c", "import federate; print(federate.__file__)"],
                           cwd=checkout, env=env, capture_output=True, text=True)
    assert probe.stdout.startswith(str(checkout)), probe.stdout + probe.stderr
    return subprocess.run([PYINFRA, inventory_of_before(info, checkout), "deploy.py", "-y"], cwd=checkout, env=env,
                          text=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=1200)


def inventory_of_before(info: dict, checkout) -> str:
    """The lab inventory in the host data BEFORE knew: ip_range_whitelist per host, no ssh section."""
    def as_before(hosts):
        for _, data in hosts:
            data.pop("ssh", None)
            ranges = [r for hs in data["homeservers"] for r in hs.pop("ip_range_whitelist", [])]
            data["ip_range_whitelist"] = list(dict.fromkeys(ranges))
    return write_inventory(Path(checkout).parent / "inventory-before.py", info["inventory"], as_before)


@pytest.fixture(scope="module")
def migrated(solo):
    lab, info, checkout = solo
    before = deploy_the_code_of_before(info, checkout)
    assert before.returncode == 0, before.stdout[-3000:] + before.stderr[-2000:]
    owners = ssh(info, "ps -eo user:30,args | grep '[s]ynapse.app.homeserver' | awk '{print $1}'").stdout.split()
    assert owners == ["matrix-synapse", "matrix-synapse"]
    users = prove.accounts(prove.load_settings(info["inventory"]))
    traces = {name: asyncio.run(leave_traces(users[name], info["dns"], info["ca_file"])) for name in SERVERS}
    hashes = ssh(info, f"sha256sum {KEPT}").stdout
    since = ssh(info, "date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    time.sleep(1)
    now = run_deploy(info["inventory"], "--json")
    return info, users, traces, hashes, since, now


def test_one_run_moves_each_homeserver_to_its_own_user(migrated):
    info, _, _, _, since, now = migrated
    assert now.returncode == 0, now.stdout[-3000:] + now.stderr[-3000:]
    changed = changed_names(now, "solo")
    for name, user in SERVERS.items():
        assert f"{name}: its own OS user {user}" in changed
        assert f"{name}: runs as {user} (unit drop-in)" in changed
        assert f"{name}: everything in /var/lib/matrix-synapse/{name} owned by {user}" in changed
        running = ssh(info, f"ps -o user= -p $(systemctl show -p MainPID --value matrix-synapse@{name})").stdout
        assert running.strip() == user
        found = ssh(info, f"find /etc/matrix-synapse/{name} /var/lib/matrix-synapse/{name} ! -user {user}").stdout
        assert found == "", found
        starts = ssh(info, f"journalctl -u matrix-synapse@{name} --since '{since}' --no-pager "
                           "| grep -c 'STARTING SERVER'", check=False).stdout.strip()
        assert starts == "1", f"{name} started {starts} times during the move"
    assert "The formerly shared user matrix-synapse removed" in changed
    assert ssh(info, "id matrix-synapse", check=False).returncode != 0
    ident = ssh(info, "cat /etc/postgresql/15/main/pg_ident.conf").stdout
    assert "matrix-synapse" not in ident
    assert "federate  synapse_gamma_test  synapse_gamma_test" in ident
    assert_converged(info["inventory"])


def test_rooms_messages_media_keys_and_secrets_kept(migrated):
    info, users, traces, hashes, _, _ = migrated
    for name in SERVERS:
        bodies, media_sha256 = asyncio.run(find_traces(users[name], info["dns"], info["ca_file"], traces[name]))
        assert "still here" in bodies, name
        assert media_sha256 == traces[name]["sha256"], name
    assert ssh(info, f"sha256sum {KEPT}").stdout == hashes


def test_after_the_move_neither_user_reaches_the_others_key_or_database(migrated):
    info = migrated[0]
    for own, other in (("gamma.test", "internal.gamma.test"), ("internal.gamma.test", "gamma.test")):
        as_user = f"cd / && runuser -u {SERVERS[own]} --"
        key = ssh(info, f"{as_user} cat /etc/matrix-synapse/{other}/signing.key", check=False)
        assert key.returncode != 0 and "Permission denied" in key.stderr
        role = SERVERS[other]
        database = ssh(info, f"{as_user} psql -h /var/run/postgresql -U {role} -d {role} -Atc 'SELECT 1'", check=False)
        assert database.returncode != 0 and "Peer authentication failed" in database.stderr
