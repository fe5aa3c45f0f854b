"""Benchmark of how deploy times grow with hosts: cold and no-op deploys of 1, 4 and 10 hosts.

    .venv/bin/python bench/scale.py [--sizes 1,4,10] [--database postgres|sqlite] [--profile] [--compare CHECKOUT]

Per size, one after the other, a lab of that many fresh hosts (Debian 12, one homeserver each,
nginx and ufw; its inventory holds only them) is booted, gets a cold deploy and a no-op deploy,
and is removed: the no-op's ratio to the first size's is printed. `--profile` also writes a cProfile of each
no-op's controller process (`/tmp/federate-scale-<size>.prof`) and prints its top entries.
`--compare` times the same no-ops again with the deploy of another checkout of federate (an
older commit), on the same converged hosts: before/after figures from one lab.

Memory: a host with PostgreSQL and Synapse takes about 300 MB, so 10 hosts need about 3 GB.
Prints figures; asserts nothing about speed. Each lab is removed, even on failure.
"""

from __future__ import annotations

import argparse
import os
import pstats
import signal
import subprocess
import sys
import time

from federate.lab import Lab
from federate.lab.runner import PYINFRA, REPO_ROOT, json_totals, run_deploy


def topology(sizes: list[int], host_data: dict) -> dict:
    """Hosts s<size>h<n>, each with one external homeserver h<n>.s<size>.test."""
    hosts = {}
    for size in sizes:
        for n in range(1, size + 1):
            hosts[f"s{size}h{n}"] = {"homeservers": [{"server_name": f"h{n}.s{size}.test"}],
                                     "host_data": host_data}
    return {"hosts": hosts}


def timed(func) -> tuple[float, object]:
    start = time.monotonic()
    value = func()
    return time.monotonic() - start, value


def profiled_noop(inventory: str, size: int) -> float:
    """The no-op under cProfile (the controller's own time); prints its top entries."""
    out = f"/tmp/federate-scale-{size}.prof"
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "cProfile", "-o", out, PYINFRA, inventory, "deploy.py", "-y"],
                   cwd=REPO_ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1200, check=True)
    took = time.monotonic() - start
    print(f"  profile of the {size}-host no-op ({out}), by own time:")
    pstats.Stats(out).sort_stats("tottime").print_stats(8)
    return took


def noop_with(checkout: str, inventory: str) -> None:
    """A no-op deploy with another checkout's code (its deploy.py and federate package)."""
    result = subprocess.run([PYINFRA, inventory, "deploy.py", "-y"], cwd=checkout, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=1200, env={**os.environ, "PYTHONPATH": checkout})
    if result.returncode != 0:
        raise RuntimeError(f"no-op with {checkout} failed: {result.stderr[-2000:]}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"terminated by signal {signum}")  # so the lab is taken down


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1,4,10")
    parser.add_argument("--database", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--compare", help="another checkout of federate whose no-op is timed too")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    noops: dict[int, float] = {}
    for size in sizes:
        lab = Lab(f"scale{os.getpid() % 10000}n{size}", root=REPO_ROOT, log=lambda _: None)
        try:
            took, info = timed(lambda: lab.up(topology([size], {"database": args.database})))
            inventory = info["inventory"]
            cold_s, cold = timed(lambda: run_deploy(inventory))
            if cold.returncode != 0:
                print(cold.stdout[-3000:], cold.stderr[-2000:])
                return 1
            noop_s, noop = timed(lambda: run_deploy(inventory, "--json"))
            noops[size] = noop_s
            ratio = f", {noop_s / noops[sizes[0]]:.2f} x {sizes[0]} host(s)" if size != sizes[0] else ""
            print(f"{size:>3} host(s): lab up {took:5.1f} s, cold {cold_s:6.1f} s, no-op {noop_s:5.1f} s "
                  f"({json_totals(noop)['success']} changed; {100 * noop_s / cold_s:.1f} % of cold{ratio})", flush=True)
            if args.profile:
                profiled_noop(inventory, size)
            if args.compare:
                compare_s, _ = timed(lambda: noop_with(args.compare, inventory))
                print(f"    no-op with {args.compare}: {compare_s:5.1f} s", flush=True)
        finally:
            lab.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
