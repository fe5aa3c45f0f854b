"""Issue (Debian 13): a deployed Debian 12 host upgraded to Debian 13, then the deploy re-run.

This runs last on the shared lab (the `zz`), since it moves hs1 from bookworm to trixie: hs1's
Synapse venv no longer runs on Python 3.13 and is rebuilt, its PostgreSQL 15 cluster is kept and
used, and alpha.test and internal.alpha.test keep rooms, messages, media, keys and secrets, and
federate with beta.test (hs2, Debian 13 from the start) as before.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from federate.lab import prove
from federate.lab.clients import find_traces, leave_traces
from federate.lab.runner import assert_converged, changed_names, run_deploy

pytestmark = pytest.mark.lab

FEDERATE = str(Path(sys.executable).parent / "federate")
SERVERS = ("alpha.test", "internal.alpha.test")
KEPT = " ".join(f"/etc/matrix-synapse/{name}/{file}" for name in SERVERS for file in ("signing.key", "secrets.yaml"))
# What README's "Upgrading Debian" tells the user to run on the host.
UPGRADE = ("sed -i 's/bookworm/trixie/g' /etc/apt/sources.list && apt-get update -qq && "
           "DEBIAN_FRONTEND=noninteractive apt-get full-upgrade -y -qq "
           "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold >/root/upgrade.log 2>&1")


@pytest.fixture(scope="module")
def upgraded(deployed):
    """Traces left on hs1's homeservers, then hs1 upgraded to Debian 13 and the deploy re-run."""
    users = prove.accounts(prove.load_settings(deployed.inventory))
    info = deployed.info
    traces = {name: asyncio.run(leave_traces(users[name], info["dns"], info["ca_file"])) for name in SERVERS}
    hashes = deployed.ssh("hs1", f"sha256sum {KEPT}").stdout
    assert deployed.ssh("hs1", "cat /etc/debian_version").stdout.startswith("12.")
    start = time.monotonic()
    deployed.ssh("hs1", UPGRADE, timeout=1500)  # about 90 s alone; minutes while other suites run beside it
    deployed.timings["release_upgrade"] = time.monotonic() - start
    start = time.monotonic()
    # the old venv's Python is gone: Synapse cannot start again until the deploy rebuilt it
    restart = deployed.ssh("hs1", "systemctl restart matrix-synapse@alpha.test", check=False)
    rerun = run_deploy(deployed.inventory, "--json")
    deployed.timings["deploy_after_upgrade"] = time.monotonic() - start
    return users, traces, hashes, restart, rerun


def test_the_host_runs_debian_13_and_its_old_venv_broke(deployed, upgraded):
    _, _, _, restart, _ = upgraded
    assert deployed.ssh("hs1", "cat /etc/debian_version").stdout.startswith("13.")
    assert restart.returncode != 0  # python3.11 and the venv's packages for it are gone


def test_one_run_rebuilds_the_venv_and_keeps_the_postgresql_15_cluster(deployed, upgraded):
    *_, rerun = upgraded
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    changed = changed_names(rerun, "hs1")
    # the venv no longer runs: made anew in the background, beside the packages, and waited for
    assert "matrix-synapse 1.163.2 in /opt/matrix-synapse/venv: made in the background, beside the packages" in changed
    assert "The venv made in the background: waited for" in changed
    assert {f"{name}: restart on change" for name in SERVERS} <= changed
    assert changed_names(rerun, "hs2") == set()
    assert "Synapse's databases stay in the PostgreSQL 15 cluster; Debian 13 ships PostgreSQL 17" in rerun.stderr
    venv_python = deployed.ssh("hs1", "/opt/matrix-synapse/venv/bin/python -V").stdout
    assert venv_python.startswith("Python 3.13")
    clusters = deployed.ssh("hs1", "pg_lsclusters --no-header").stdout.split("\n")
    assert [line.split()[:4] for line in clusters if line] == [["15", "main", "5432", "online"]]
    databases = deployed.ssh("hs1", "su postgres -c 'psql -Atc \"SELECT datname FROM pg_database\"'").stdout.split()
    assert {"synapse_alpha_test", "synapse_internal_alpha_test"} <= set(databases)
    for name in SERVERS:
        assert deployed.ssh("hs1", f"systemctl is-active matrix-synapse@{name}").stdout.strip() == "active"
    assert_converged(deployed.inventory)


def test_rooms_messages_media_keys_and_secrets_kept(deployed, upgraded):
    users, traces, hashes, _, _ = upgraded
    info = deployed.info
    for name in SERVERS:
        bodies, media_sha256 = asyncio.run(find_traces(users[name], info["dns"], info["ca_file"], traces[name]))
        assert "still here" in bodies, name
        assert media_sha256 == traces[name]["sha256"], name
    assert deployed.ssh("hs1", f"sha256sum {KEPT}").stdout == hashes


def test_federation_across_the_upgraded_host_still_works(deployed, upgraded):
    """federate prove (well-known, TLS, keys, a room alpha.test <-> beta.test, the internal
    server's policy) and federate verify, both from outside."""
    lab_json = deployed.lab.paths.file("lab.json")
    proved = subprocess.run([FEDERATE, "prove", "--lab-json", str(lab_json)], text=True, capture_output=True,
                            stdin=subprocess.DEVNULL, timeout=600)
    assert proved.returncode == 0, proved.stdout[-3000:] + proved.stderr[-2000:]
    assert "room across hosts (alpha.test <-> beta.test)" in proved.stdout
    verified = subprocess.run([FEDERATE, "verify", deployed.inventory, "--json"], text=True, capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=300)
    assert verified.returncode == 0, verified.stdout[-3000:]
    report = json.loads(verified.stdout)
    assert report["ok"] and len(report["results"]) == 3, verified.stdout[-3000:]


def test_moving_the_cluster_to_postgresql_17_as_the_readme_says(deployed, upgraded):
    """README's steps for the user's move from 15 to 17 (pg_upgradecluster), then the deploy:
    it manages the 17 cluster now on port 5432, stops warning, and all data is still there."""
    users, traces, hashes, _, _ = upgraded
    deployed.ssh("hs1", "systemctl stop 'matrix-synapse@*' && "
                        "if pg_lsclusters --no-header | grep -q '^17 *main'; then pg_dropcluster 17 main --stop; fi && "
                        "pg_upgradecluster 15 main >/root/pg_upgradecluster.log 2>&1")
    moved = run_deploy(deployed.inventory, "--json")
    assert moved.returncode == 0, moved.stdout[-3000:] + moved.stderr[-3000:]
    assert "stay in the PostgreSQL" not in moved.stderr
    clusters = [line.split()[:4] for line in deployed.ssh("hs1", "pg_lsclusters --no-header").stdout.splitlines()]
    assert ["17", "main", "5432", "online"] in clusters
    ident = deployed.ssh("hs1", "cat /etc/postgresql/17/main/pg_ident.conf").stdout
    assert "synapse_alpha_test" in ident and "synapse_internal_alpha_test" in ident
    deployed.ssh("hs1", "pg_dropcluster 15 main --stop")
    assert_converged(deployed.inventory)
    info = deployed.info
    for name in SERVERS:
        bodies, media_sha256 = asyncio.run(find_traces(users[name], info["dns"], info["ca_file"], traces[name]))
        assert "still here" in bodies and media_sha256 == traces[name]["sha256"], name
    assert deployed.ssh("hs1", f"sha256sum {KEPT}").stdout == hashes
