"""Benchmark on a throwaway lab: backup, verify and restore of a seeded homeserver.

    .venv/bin/python bench/backup_restore.py [--rooms 50] [--messages 20] [--files 20] [--file-kib 512]

beta.test (hs1) is seeded with ROOMS rooms of MESSAGES messages and FILES uploads of FILE_KIB KiB,
then `federate backup`, `federate backup --verify`, and a deploy that restores it onto hs2 (another
host, another address) after hs1 is powered off; prints sizes and times. Asserts nothing about
speed. The lab is removed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from federate.lab import Lab, prove
from federate.lab.clients import find_traces, seed
from federate.lab.runner import REPO_ROOT, run_deploy, write_inventory

FEDERATE = str(Path(sys.executable).parent / "federate")
NAME = "beta.test"
TOPOLOGY = {"hosts": {
    # seeding is not throttled by Synapse's rate limits for messages and new rooms
    "hs1": {"homeservers": [{"server_name": NAME, "users": [{"localpart": "bob"}],
                             "synapse_extra": {"rc_message": {"per_second": 1000, "burst_count": 10000},
                                               "rc_room_creation": {"per_second": 1000, "burst_count": 10000}}}]},
    "hs2": {"homeservers": []},  # the new host
}}


def timed(label: str, func):
    start = time.monotonic()
    value = func()
    print(f"{label:<34} {time.monotonic() - start:7.1f} s", flush=True)
    return value


def federate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FEDERATE, *args], cwd=REPO_ROOT, text=True, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=3600)


def only(host: str, folder: Path | None = None, address: str | None = None):
    """The inventory with beta.test on `host` (the other host left out)."""
    def mutate(hosts):
        data = dict(hosts)["hs1"]
        if address:
            data["ssh_hostname"] = address
        if folder:
            data["homeservers"] = [{**hs, "restore_from": str(folder)} for hs in data["homeservers"]]
        hosts[:] = [(host, data)]
    return mutate


def checked(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if result.returncode != 0:
        raise SystemExit(f"{what} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--messages", type=int, default=20, help="messages per room")
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--file-kib", type=int, default=512)
    args = parser.parse_args()
    lab = Lab(f"bkp{os.getpid() % 10000}", root=REPO_ROOT, log=lambda _: None)
    work = Path(tempfile.mkdtemp(prefix="federate-bench-"))
    try:
        info = timed("lab up (2 hosts)", lambda: lab.up(TOPOLOGY))
        first = write_inventory(work / "first.py", info["inventory"], only("hs1"))
        checked(timed("cold deploy of beta.test", lambda: run_deploy(first)), "deploy")
        bob = prove.accounts(prove.load_settings(first))[NAME]
        seeded = timed(f"seed {args.rooms} rooms x {args.messages}, {args.files} files",
                       lambda: asyncio.run(seed(bob, info["dns"], info["ca_file"], rooms=args.rooms,
                                                messages=args.messages, files=args.files,
                                                file_size=args.file_kib << 10)))
        backup = checked(timed("federate backup", lambda: federate("backup", first, "--to", str(work / "backups"))),
                         "backup")
        folder = Path(backup.stdout.strip())
        checked(timed("federate backup --verify", lambda: federate("backup", first, "--verify", str(folder))),
                "verify")
        lab.stop_host("hs1")
        lab.point_names([NAME], "hs2")
        moved = write_inventory(work / "moved.py", info["inventory"],
                                only("hs2", folder, info["hosts"]["hs2"]["address"]))
        checked(timed("deploy with restore (new host)", lambda: run_deploy(moved)), "restore deploy")
        noop = timed("re-run (restore_from kept)", lambda: run_deploy(moved))
        checked(noop, "re-run")
        mxc, sha256 = next(iter(seeded["media"].items()))
        traces = {"room_id": "", "mxc": mxc}
        if asyncio.run(find_traces(bob, info["dns"], info["ca_file"], {**traces, "room_id": _any_room(bob, info)}))[1] \
                != sha256:
            raise SystemExit("a seeded file differs after the restore")
        manifest = json.loads((folder / "manifest.json").read_text())
        print("backup: " + ", ".join(f"{name} {entry['size'] / 2**20:.1f} MiB" for name, entry in manifest["files"].items()))
        print(f"seeded: {seeded['rooms']} rooms, {seeded['messages']} messages, {len(seeded['media'])} files "
              f"of {args.file_kib} KiB")
        return 0
    finally:
        lab.down()
        subprocess.run(["rm", "-rf", str(work)], check=False)


def _any_room(account, info) -> str:
    """A room the account is in (find_traces reads one room's history beside the download)."""
    from federate.lab.clients import login

    async def rooms():
        client = await login(account, info["dns"], info["ca_file"])
        try:
            reply = await client.joined_rooms()
            return reply.rooms[0]
        finally:
            await client.close()
    return asyncio.run(rooms())


if __name__ == "__main__":
    sys.exit(main())
