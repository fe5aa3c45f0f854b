"""Benchmark on a throwaway lab: lab up, cold deploy, no-op re-run, federation latency.

    .venv/bin/python bench/lab_timings.py [--messages 20] [--variant default|caddy] [--release bookworm|trixie]

`--variant caddy` deploys both hosts with caddy and nftables instead of nginx and ufw; `--release`
picks the Debian release of both hosts (12, bookworm, by default; 13 is trixie).

Prints figures; asserts nothing about speed. The lab is removed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import statistics
import time

from federate.lab import prove
from federate.lab.clients import room_across_servers
from federate.lab import Lab, rootfs
from federate.lab.runner import REPO_ROOT, json_totals, run_deploy

VARIANTS = {"default": {}, "caddy": {"proxy": "caddy", "firewall": "nftables"}}
TOPOLOGY = {"hosts": {
    "hs1": {"homeservers": [{"server_name": "alpha.test", "public_host": "matrix.alpha.test",
                             "users": [{"localpart": "alice"}]}]},
    "hs2": {"homeservers": [{"server_name": "beta.test", "users": [{"localpart": "bob"}]}]},
}}


def timed(label: str, func):
    start = time.monotonic()
    value = func()
    print(f"{label:<28} {time.monotonic() - start:7.1f} s", flush=True)
    return value


def facts_asked(result) -> str:
    """How many facts (each one SSH round trip) a `--debug` run asked of each host."""
    counts = collections.Counter(re.findall(r"\[(\w+)\] Loaded fact", re.sub(r"\x1b\[[0-9;]*m", "", result.stderr
                                                                               + result.stdout)))
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20, help="messages each way")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="default")
    parser.add_argument("--release", choices=rootfs.RELEASES, default=rootfs.DEFAULT_RELEASE)
    args = parser.parse_args()
    topology = {"hosts": {name: {**spec, "host_data": VARIANTS[args.variant]}
                          for name, spec in TOPOLOGY["hosts"].items()}}
    print(f"variant: {args.variant} {VARIANTS[args.variant] or '(nginx, ufw, postgres)'}, release {args.release}")
    lab = Lab(f"bench{os.getpid() % 10000}", root=REPO_ROOT, log=lambda _: None)
    try:
        info = timed("lab up (2 hosts)", lambda: lab.up(topology, release=args.release))
        cold = timed("cold deploy", lambda: run_deploy(info["inventory"]))
        if cold.returncode != 0:
            print(cold.stdout[-3000:], cold.stderr[-2000:])
            return 1
        noop = timed("no-op deploy", lambda: run_deploy(info["inventory"], "--json"))
        print(f"{'no-op changed operations':<28} {json_totals(noop)['success']:7d}")
        print(f"{'no-op round trips per host':<28} {facts_asked(run_deploy(info['inventory'], '--debug'))}")
        settings = prove.load_settings(info["inventory"])
        accounts = prove.accounts(settings)
        result = asyncio.run(room_across_servers(accounts["alpha.test"], accounts["beta.test"], info["dns"],
                                                 info["ca_file"], messages=args.messages))
        ms = [value * 1000 for value in result.latencies]
        print(f"{'federation send->seen':<28} n={len(ms)} p50={statistics.median(ms):.0f} ms "
              f"p95={percentile(ms, 0.95):.0f} ms max={max(ms):.0f} ms")
        return 0
    finally:
        timed("lab down", lab.down)


if __name__ == "__main__":
    raise SystemExit(main())
