"""Issue 14 (item 3): beta.test moves to a new host from its backup (the caddy + nftables lab,
after test_variants is done with it).

bob (beta.test, on hs2, Debian 13) shares a room with alice (alpha.test, hs1), leaves a message and
a file, and seeds some history and media; `federate backup` copies beta.test. hs2 is powered off
for good and beta.test's name points at the spare hs3 (another address). The inventory moves
beta.test to hs3 with `restore_from`: one run brings it back with the same signing key, history,
media and users; bob and alice exchange messages both ways in their old room; the next run changes
nothing; a restore from another backup over the live database is refused before anything changes.
Backup and restore times and sizes are printed.
"""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from federate.lab import prove
from federate.lab.clients import exchange_in_room, find_traces, leave_traces, room_across_servers, room_bodies, seed
from federate.lab.runner import REPO_ROOT, assert_converged, error_lines, run_deploy, write_inventory
from federate.manifest import backup_id

pytestmark = pytest.mark.lab

FEDERATE = str(Path(sys.executable).parent / "federate")
NAME = "beta.test"
KEY = f"/etc/matrix-synapse/{NAME}/signing.key"
SEED = {"rooms": 5, "messages": 10, "files": 4, "file_size": 256 << 10}  # more: bench/backup_restore.py


def federate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FEDERATE, *args], cwd=REPO_ROOT, text=True, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=600)


def moved_to_hs3(session, folder: Path):
    """hs2 leaves the inventory; hs3 (its address, the same host data) gets beta.test from the backup."""
    def move(hosts):
        data = copy.deepcopy(dict(hosts)["hs2"])
        data["ssh_hostname"] = session.address("hs3")
        data["homeservers"] = [{**hs, "restore_from": str(folder)} for hs in data["homeservers"]
                               if hs["server_name"] == NAME]
        hosts[:] = [(name, d) for name, d in hosts if name != "hs2"] + [("hs3", data)]
    return move


def restore_from(folder: Path):
    def point(hosts):
        dict(hosts)["hs3"]["homeservers"][0]["restore_from"] = str(folder)
    return point


def test_beta_moves_to_a_new_host_from_its_backup(variant_lab, tmp_path, capsys):
    info, figures = variant_lab.info, {}
    dns, ca = info["dns"], info["ca_file"]
    accounts = prove.accounts(prove.load_settings(variant_lab.inventory))
    alice, bob = accounts["alpha.test"], accounts[NAME]
    shared = asyncio.run(room_across_servers(alice, bob, dns, ca))
    traces = asyncio.run(leave_traces(bob, dns, ca))
    start = time.monotonic()
    seeded = asyncio.run(seed(bob, dns, ca, **SEED))
    figures["seed"] = time.monotonic() - start
    key = variant_lab.ssh("hs2", f"sha256sum {KEY}").stdout.split()[0]

    start = time.monotonic()
    backup = federate("backup", variant_lab.inventory, "--server", NAME, "--to", str(tmp_path / "backups"))
    figures["backup"] = time.monotonic() - start
    assert backup.returncode == 0, backup.stderr
    folder = Path(backup.stdout.strip())
    sizes = {name: entry["size"] for name, entry in json.loads((folder / "manifest.json").read_text())["files"].items()}

    variant_lab.lab.stop_host("hs2")  # the old host is gone for good
    variant_lab.lab.point_names([NAME], "hs3")
    moved = write_inventory(tmp_path / "moved.py", variant_lab.inventory, moved_to_hs3(variant_lab, folder))
    start = time.monotonic()
    run = run_deploy(moved)
    figures["restore deploy (cold host)"] = time.monotonic() - start
    assert run.returncode == 0, f"{error_lines(run.stderr + run.stdout)}\n{run.stderr[-3000:]}"
    assert f"{NAME}: restored from {folder}" in run.stdout + run.stderr

    assert variant_lab.ssh("hs3", f"sha256sum {KEY}").stdout.split()[0] == key
    marker, *state = variant_lab.ssh("hs3", f"cat /var/lib/federate/restored/{NAME}; ls /var/lib/federate").stdout.split()
    assert marker == backup_id(folder) and "restore" not in state, state  # the staging copy of the backup is gone
    messages, media_sha256 = asyncio.run(find_traces(bob, dns, ca, traces))
    assert "still here" in messages and media_sha256 == traces["sha256"]
    mxc, sha256 = next(iter(seeded["media"].items()))
    assert asyncio.run(find_traces(bob, dns, ca, {**traces, "mxc": mxc}))[1] == sha256
    history = asyncio.run(room_bodies(alice, shared.room_id, dns, ca))
    assert any(body.startswith(f"ping 0 from {bob.user_id}") for body in history), history
    # bob first: alpha.test hears from beta.test again before it sends there
    latencies = asyncio.run(exchange_in_room(bob, alice, shared.room_id, dns, ca))
    assert len(latencies) == 2

    assert_converged(moved)  # restore_from stays in the inventory: nothing to do any more

    other = tmp_path / "other"  # another backup of beta.test (its manifest differs)
    subprocess.run(["cp", "-a", str(folder), str(other)], check=True)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "created": "20260101T000000Z"}))
    refused = run_deploy(write_inventory(tmp_path / "again.py", moved, restore_from(other)))
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert ("host hs3: homeservers[0].restore_from: beta.test already has a database with data on this host"
            in output), output[-3000:]
    assert "Traceback" not in output
    assert variant_lab.ssh("hs3", f"sha256sum {KEY}; cat /var/lib/federate/restored/{NAME}").stdout.split()[::2] \
        == [key, backup_id(folder)]
    with capsys.disabled():
        print(f"\n[restore] seeded {seeded['rooms']} rooms, {seeded['messages']} messages, {len(seeded['media'])} "
              f"files of {SEED['file_size'] >> 10} KiB; backup sizes: "
              + ", ".join(f"{name} {size / 1024:.0f} KiB" for name, size in sizes.items()) + "; "
              + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in figures.items())
              + f"; bob -> alice {latencies[0]:.1f}s, alice -> bob {latencies[1]:.1f}s after the move")
