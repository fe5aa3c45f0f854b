"""One lab for the whole lab test session: booted, deployed once with the real CLI, torn down
even when tests fail. Everything is observed from outside: TLS, HTTP, ports, SSH."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from federate.lab import Lab

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(os.sys.executable).parent / "pyinfra")

TOPOLOGY = {
    "hosts": {
        "hs1": {"homeservers": [
            {"server_name": "alpha.test", "public_host": "matrix.alpha.test",
             "users": [{"localpart": "alice", "admin": True}]},
            {"server_name": "internal.alpha.test", "profile": "internal",
             "federation_whitelist": ["alpha.test"], "users": [{"localpart": "carol"}]},
        ]},
        "hs2": {"homeservers": [
            {"server_name": "beta.test", "users": [{"localpart": "bob"}]},
        ]},
    },
}


def run_deploy(inventory: str, *extra: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    """`pyinfra INVENTORY deploy.py -y` exactly as a user runs it (from the repo root)."""
    return subprocess.run([PYINFRA, inventory, "deploy.py", "-y", *extra], cwd=REPO, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout)


def json_totals(result: subprocess.CompletedProcess) -> dict:
    """The `results.totals` of a `--json` run (pyinfra prints the JSON document last)."""
    start = result.stdout.index("{")
    return json.loads(result.stdout[start:])["results"]["totals"]


class LabSession:
    def __init__(self, lab: Lab, info: dict):
        self.lab, self.info = lab, info
        self.timings: dict[str, float] = {}

    @property
    def inventory(self) -> str:
        return self.info["inventory"]

    def address(self, host: str) -> str:
        return self.info["hosts"][host]["address"]

    def ssh(self, host: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["ssh", "-i", self.info["ssh_key"], "-o", f"UserKnownHostsFile={self.info['known_hosts']}",
             "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
             f"root@{self.address(host)}", command],
            text=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"ssh {host} {command!r} failed: {result.stderr}{result.stdout}")
        return result


@pytest.fixture(scope="session")
def lab():
    lab = Lab(f"t{os.getpid() % 100000}", root=REPO)
    try:
        start = time.monotonic()
        info = lab.up(TOPOLOGY)
        session = LabSession(lab, info)
        session.timings["lab_up"] = time.monotonic() - start
        yield session
    finally:
        lab.down()


@pytest.fixture(scope="session")
def deployed(lab):
    """The first (cold) deploy of the lab inventory."""
    start = time.monotonic()
    result = run_deploy(lab.inventory)
    lab.timings["cold_deploy"] = time.monotonic() - start
    assert result.returncode == 0, f"deploy failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    return lab
