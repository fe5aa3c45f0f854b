"""Benchmark of how deploy times grow with hosts: cold and no-op deploys of 1, 4 and 10 hosts.

    .venv/bin/python bench/scale.py [--sizes 1,4,10] [--database postgres|sqlite] [--profile] [--compare CHECKOUT]

Per size, one after the other, a lab of that many fresh hosts (Debian 12, one homeserver each,
nginx and ufw; its inventory holds only them) is booted, gets a cold deploy and a no-op deploy,
and is removed: the no-op's ratio to the first size's is printed. The first re-run after the cold
deploy is shown apart (Synapse still starting, the venv's checks stamped once); the no-op is the next,
once the hosts have settled (their own CPU use near idle, or two minutes gone). For the no-op it also prints the
controller's CPU time (the pyinfra process), the hosts' CPU time (their cgroups: on a lab they share
the controller's CPUs, so their work grows with their number too), each per host, and where the
wall time went: start-up, SSH connections, planning (every host's deploy code, one host after the
other), execution (each operation runs on all hosts, then waits for the slowest: the number of
these barriers is printed) and the disconnect. `--profile` also writes a cProfile of each
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
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time

from federate.lab import Lab
from federate.lab.runner import PYINFRA, REPO_ROOT, error_lines, json_totals, run_deploy


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


# pyinfra's progress lines that start each phase of a run (start-up: Python, imports, the inventory)
PHASES = (("start-up", ""), ("connect", "--> Connecting to hosts"),
          ("planning", "--> Preparing operation"), ("execution", "--> Beginning operation run"),
          ("disconnect", "--> Results"))


def controller_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def settled(lab: Lab, size: int, idle: float = 0.05, most: float = 120) -> tuple[float, float]:
    """Waits until the hosts' own work (Synapse starting, its first background jobs) is done: their
    CPU under `idle` seconds per second per host over 3 s, or `most` seconds gone. Returns (seconds
    waited, the last CPU rate per host): on a lab their work shares the controller's CPUs."""
    start = time.monotonic()
    while True:
        before = lab.hosts_cpu_seconds()
        time.sleep(3)
        rate = (lab.hosts_cpu_seconds() - before) / 3 / size
        if rate < idle or time.monotonic() - start > most:
            return time.monotonic() - start, rate


def measured_noop(lab: Lab, inventory: str) -> dict:
    """A `--json` no-op: its result, wall time, the controller's and the hosts' CPU time, the time
    of each phase and the number of operations (each a barrier across hosts)."""
    cpu, hosts_cpu, start = controller_cpu(), lab.hosts_cpu_seconds(), time.monotonic()
    marks: list[tuple[str, float]] = []
    lines: list[str] = []

    def follow(stream):  # pyinfra logs to stderr as it goes; stdout holds the JSON at the end
        for line in stream:
            lines.append(line)
            if line.startswith("--> "):
                marks.append((line, time.monotonic() - start))

    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen([PYINFRA, inventory, "deploy.py", "-y", "--json"], cwd=REPO_ROOT, text=True,
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE)
        reader = threading.Thread(target=follow, args=(process.stderr,))
        reader.start()
        try:
            process.wait(timeout=1200)
        finally:
            process.kill()  # only when it outlived the timeout (a finished one is reaped already)
            reader.join()
        wall = time.monotonic() - start
        out.seek(0)
        result = subprocess.CompletedProcess(process.args, process.returncode, out.read(), "".join(lines))
    starts = [next((t for line, t in marks if line.startswith(prefix)), None) if prefix else 0.0
              for _, prefix in PHASES]
    ends = [*starts[1:], wall]
    phases = {name: end - begin for (name, _), begin, end in zip(PHASES, starts, ends)
              if begin is not None and end is not None}
    return {"result": result, "wall": wall, "controller_cpu": controller_cpu() - cpu,
            "hosts_cpu": lab.hosts_cpu_seconds() - hosts_cpu, "phases": phases,
            "barriers": sum(line.startswith("--> Starting operation") for line, _ in marks)}


def report_noop(size: int, noop: dict) -> None:
    phases = ", ".join(f"{name} {seconds:.1f}" for name, seconds in noop["phases"].items())
    print(f"    no-op CPU: controller {noop['controller_cpu']:.2f} s ({noop['controller_cpu'] / size:.2f} per host), "
          f"hosts {noop['hosts_cpu']:.2f} s ({noop['hosts_cpu'] / size:.2f} per host); "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"    no-op wall by phase (s): {phases}; {noop['barriers']} operation barriers", flush=True)


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
                print(error_lines(cold.stdout + cold.stderr, limit=80))
                return 1
            # The first re-run after a cold deploy is no steady no-op: Synapse is still busy starting
            # and the venv's slow checks run once before their stamp is kept; it is shown apart.
            first = measured_noop(lab, inventory)
            print(f"    first re-run after cold: {first['wall']:5.1f} s; CPU: controller {first['controller_cpu']:.2f} s, "
                  f"hosts {first['hosts_cpu']:.2f} s", flush=True)
            waited, busy = settled(lab, size)
            print(f"    hosts settled after {waited:.0f} s (their CPU {busy:.3f} s per second per host)", flush=True)
            measured = measured_noop(lab, inventory)
            noop, noop_s = measured["result"], measured["wall"]
            if noop.returncode != 0:
                print(error_lines(noop.stdout + noop.stderr, limit=80))
                return 1
            noops[size] = noop_s
            ratio = f", {noop_s / noops[sizes[0]]:.2f} x {sizes[0]} host(s)" if size != sizes[0] else ""
            print(f"{size:>3} host(s): lab up {took:5.1f} s, cold {cold_s:6.1f} s, no-op {noop_s:5.1f} s "
                  f"({json_totals(noop)['success']} changed; {100 * noop_s / cold_s:.1f} % of cold{ratio})", flush=True)
            report_noop(size, measured)
            if args.profile:
                profiled_noop(inventory, size)
            if args.compare:
                cpu, hosts_cpu = controller_cpu(), lab.hosts_cpu_seconds()
                compare_s, _ = timed(lambda: noop_with(args.compare, inventory))
                print(f"    no-op with {args.compare}: {compare_s:5.1f} s; CPU: controller "
                      f"{controller_cpu() - cpu:.2f} s, hosts {lab.hosts_cpu_seconds() - hosts_cpu:.2f} s", flush=True)
        finally:
            lab.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
