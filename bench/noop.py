"""A no-op re-run on a lab that is already deployed (by default the demo lab `make demo` leaves
running): the deploy run N times with the real CLI, each one's wall time, the controller's CPU
and the operations it changed.

    .venv/bin/python bench/noop.py [--inventory .lab/inventory.py] [--runs 5]

Prints the figures, their median, and the load; asserts nothing about speed. Changes nothing on
a converged lab (a run that changes something is reported as such).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

from federate.lab.runner import REPO_ROOT, json_totals, run_deploy


def one_run(inventory: str) -> tuple[float, float, int]:
    """(wall s, controller CPU s, changed operations) of one deploy."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    result = run_deploy(inventory, "--json")
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"the deploy failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json_totals(result)["success"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inventory", default=os.path.join(REPO_ROOT, ".lab", "inventory.py"))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not os.path.exists(args.inventory):
        print(f"no lab inventory at {args.inventory}: run `make demo` (or `federate lab up` and a deploy) first")
        return 2
    walls = []
    for run in range(1, args.runs + 1):
        wall, cpu, changed = one_run(args.inventory)
        walls.append(wall)
        print(f"run {run}: {wall:5.2f} s wall, controller CPU {cpu:4.2f} s, changed operations {changed}, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"median no-op: {statistics.median(walls):.2f} s over {len(walls)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
