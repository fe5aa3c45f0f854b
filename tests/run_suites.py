"""`make test`: every test group in a pytest process of its own, a few at a time.

A group is the modules that share a lab for the whole session (the demo lab, the caddy lab), the
unit tests, or one lab module alone (conftest's `--list-groups` says which). Each pytest process
boots and removes its own labs, named by its PID, so groups never share a host. Each group's
output is printed whole when it ends; the exit status is 0 only when every group passed.

    python tests/run_suites.py [--jobs 2] [pytest options...]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTEST = [sys.executable, "-m", "pytest"]
NO_TESTS = 5  # pytest's exit status when nothing was selected


def test_groups() -> dict[str, dict]:
    with tempfile.TemporaryDirectory() as folder:
        listing = Path(folder) / "groups.json"
        result = subprocess.run([*PYTEST, "-q", "-p", "no:cacheprovider", "--list-groups", str(listing), "tests"],
                                cwd=ROOT, text=True, capture_output=True, stdin=subprocess.DEVNULL)
        if result.returncode not in (0, NO_TESTS) or not listing.exists():
            sys.exit(f"collecting the tests failed:\n{result.stdout[-5000:]}{result.stderr[-3000:]}")
        return json.loads(listing.read_text())


def longest_first(groups: dict[str, dict]) -> list[str]:
    """Lab groups by their number of tests, most first (a lab's start and first deploy cost about
    the same everywhere; the tests after it make the difference); the unit tests, quick, last."""
    return sorted(groups, key=lambda name: (name == "unit", -groups[name]["tests"], name))


class Group:
    def __init__(self, name: str, modules: list[str], options: list[str], logs: Path):
        self.name, self.log = name, logs / f"{name}.log"
        self.started = time.monotonic()
        with self.log.open("w") as out:
            self.process = subprocess.Popen([*PYTEST, *options, *modules], cwd=ROOT, stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def report(self) -> str:
        seconds = time.monotonic() - self.started
        verdict = "passed" if self.process.returncode == 0 else f"FAILED (exit {self.process.returncode})"
        return f"{self.name}: {verdict} in {seconds / 60:.1f} min"


def run(groups: dict[str, dict], jobs: int, options: list[str], logs: Path) -> list[str]:
    waiting, running, reports = longest_first(groups), [], []

    def stop(signum, frame):
        # ^C or a CI time-out: each pytest stops as on ^C, so its labs are still taken down.
        for group in running:
            group.process.send_signal(signal.SIGINT)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while waiting or running:
        while waiting and len(running) < jobs:
            name = waiting.pop(0)
            modules = groups[name]["modules"]
            print(f"--- starting {name} ({groups[name]['tests']} tests): {' '.join(modules)}", flush=True)
            running.append(Group(name, modules, options, logs))
        time.sleep(1)
        for group in [group for group in running if group.process.poll() is not None]:
            running.remove(group)
            reports.append(group.report())
            print(f"\n===== {reports[-1]} =====\n{group.log.read_text()}", flush=True)
    return reports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="groups run at once (default 2)")
    args, options = parser.parse_known_args()
    start = time.monotonic()
    groups = test_groups()
    with tempfile.TemporaryDirectory(prefix="federate-tests-") as folder:
        try:
            reports = run(groups, args.jobs, options, Path(folder))
        except KeyboardInterrupt:
            return 130
    print("\n".join(["===== groups =====", *reports, f"all groups: {(time.monotonic() - start) / 60:.1f} min"]))
    return 0 if all(" passed " in line for line in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
