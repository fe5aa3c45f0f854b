"""Issue (host lock): two deploys at once on one host, and a run cut off while it holds the lock."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from federate.lab.runner import PYINFRA, REPO_ROOT, assert_converged, changed_names, run_deploy, write_inventory

pytestmark = pytest.mark.lab

BETA = "/etc/matrix-synapse/beta.test"
LOCK = "/run/federate/deploy.lock"


def hs2_only(deployed, path, lock=None) -> str:
    def mutate(hosts):
        hosts[:] = [(name, data) for name, data in hosts if name == "hs2"]
        if lock:
            hosts[0][1]["lock"] = lock
    return write_inventory(path, deployed.inventory, mutate)


def start_deploy(inventory: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([PYINFRA, inventory, "deploy.py", "-y", *extra], cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def finished(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=900)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_two_deploys_at_once_one_changes_the_host_the_other_stops(deployed, tmp_path):
    inventory = hs2_only(deployed, tmp_path / "hs2.py")
    deployed.ssh("hs2", f"echo 'enable_registration: true' >> {BETA}/homeserver.yaml && "
                        "systemctl stop matrix-synapse@beta.test")
    runs = [start_deploy(inventory, "--json") for _ in range(2)]
    results = [finished(run) for run in runs]
    winners = [r for r in results if r.returncode == 0]
    losers = [r for r in results if r.returncode != 0]
    assert len(winners) == 1 and len(losers) == 1, [r.stderr[-2000:] for r in results]
    assert "beta.test: homeserver.yaml" in changed_names(winners[0], "hs2")
    message = losers[0].stdout + losers[0].stderr
    assert "another federate run holds the deploy lock of hs2" in message, message[-3000:]
    assert "(pid " in message and "started " in message and "Nothing was changed" in message
    # the lock is its first operation: it stopped there (a run with no host left prints no JSON)
    assert "[hs2] Success" not in message and "No hosts remaining" in message
    assert "Traceback" not in message
    assert_converged(inventory)
    assert deployed.ssh("hs2", f"test -e {LOCK}", check=False).returncode != 0  # released at the end


def test_a_run_cut_off_blocks_the_next_only_until_its_lease_ends(deployed, tmp_path):
    lease = 20
    inventory = hs2_only(deployed, tmp_path / "hs2.py", lock={"lease": lease, "wait": 120})
    # and a temporary file an earlier cut run left beside it (another run's name)
    deployed.ssh("hs2", f"echo 'enable_registration: true' >> {BETA}/homeserver.yaml && "
                        f"(umask 077 && echo half > {BETA}/homeserver.yaml.federate-new-elsewhere-1-0a0b0c)")
    cut = start_deploy(inventory)
    deadline = time.monotonic() + 180
    while deployed.ssh("hs2", f"test -s {LOCK}", check=False).returncode != 0:
        assert cut.poll() is None and time.monotonic() < deadline, "the run never took the lock"
        time.sleep(0.2)
    cut.kill()  # SIGKILL: the run cannot release its lock
    cut.wait()
    assert deployed.ssh("hs2", f"test -s {LOCK}", check=False).returncode == 0
    start = time.monotonic()
    result = run_deploy(inventory, "--json")
    took = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    assert "taken over from a run whose lease ended" in result.stdout + result.stderr
    assert took < lease + 120  # waited for the lease, not longer, then deployed
    assert "beta.test: homeserver.yaml" in changed_names(result, "hs2")
    # the other runs' temporary files (the planted one, and the cut run's if it was cut during its
    # upload) went with the file's rewrite
    assert deployed.ssh("hs2", f"ls -A {BETA}").stdout.count(".federate-") == 0
    assert_converged(inventory)


def test_a_dry_run_ignores_a_held_lock(deployed, tmp_path):
    inventory = hs2_only(deployed, tmp_path / "hs2.py")
    expires = "$(( $(date +%s) + 600 ))"
    deployed.ssh("hs2", f"mkdir -p /run/federate && printf '%s\\n%s\\n%s\\n' other-run {expires} "
                        f"'admin@elsewhere (pid 1, started now)' > {LOCK}")
    try:
        status = subprocess.run([str(Path(sys.executable).parent / "federate"), "lab", "status", "--name",
                                 deployed.lab.name],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert "deploy lock held by admin@elsewhere (pid 1, started now) until" in status.stdout, status.stdout
        dry = run_deploy(inventory, "--dry")
        assert dry.returncode == 0, dry.stderr[-3000:]
        held = run_deploy(inventory)
        assert held.returncode != 0 and "admin@elsewhere (pid 1, started now)" in held.stdout + held.stderr
    finally:
        deployed.ssh("hs2", f"rm -f {LOCK}")


def test_lock_cost_on_a_noop(deployed, tmp_path, capsys):
    """Measured, not asserted: a deploy file with only the lock's operations against one with none."""
    inventory = hs2_only(deployed, tmp_path / "hs2.py")
    (tmp_path / "empty.py").write_text("")
    (tmp_path / "lock_only.py").write_text(
        "from federate.pyinfra_ext.lease import lock_acquired, lock_released, lock_renewed\n"
        "lock_acquired(name='take', lease=300, wait=0)\n"
        "for step in range(3):\n    lock_renewed(name=f'renew {step}', lease=300)\n"
        "lock_released(name='release')\n")
    timings = {}
    for deploy in ("empty.py", "lock_only.py"):
        runs = []
        for _ in range(3):
            start = time.monotonic()
            result = subprocess.run([PYINFRA, inventory, str(tmp_path / deploy), "-y"], cwd=REPO_ROOT,
                                    capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
            runs.append(time.monotonic() - start)
            assert result.returncode == 0, result.stderr[-2000:]
        timings[deploy] = min(runs)
    with capsys.disabled():
        print(f"\n[lock] no-op cost of the lock's 5 operations on one host: "
              f"{timings['lock_only.py'] - timings['empty.py']:.2f}s "
              f"(empty deploy {timings['empty.py']:.2f}s, lock only {timings['lock_only.py']:.2f}s)")
