"""Where a cold deploy's time goes: one fresh host with two homeservers (external + internal),
deployed once with the real CLI; every operation timed from pyinfra's own output.

    .venv/bin/python bench/cold_profile.py [--release bookworm|trixie] [--top 15] [--variant default|caddy]

Prints the slowest operations and the time per kind of work (packages, Python venv, certificates,
Synapse start-up, database, the rest). Asserts nothing about speed. The lab is removed at the end,
even on failure.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import time
from collections import defaultdict

from federate.lab import Lab, hosts, rootfs
from federate.lab.runner import PYINFRA, REPO_ROOT

VARIANTS = {"default": {}, "caddy": {"proxy": "caddy", "firewall": "nftables"}}
HOMESERVERS = [
    {"server_name": "alpha.test", "public_host": "matrix.alpha.test", "users": [{"localpart": "alice"}]},
    {"server_name": "internal.alpha.test", "profile": "internal", "federation_whitelist": ["alpha.test"],
     "users": [{"localpart": "carol"}]},
]
STARTING = re.compile(r"^--> Starting operation: (.+)$")
# An operation's kind: the first pattern its full name ("Deploy | operation") matches.
KINDS = [
    ("Debian packages (apt)", re.compile(r"^System packages \|")),
    ("Synapse's venv (pip, from the lock)", re.compile(r"^Synapse \| .*\bvenv\b")),
    ("Synapse start-up (first start: schema)", re.compile(r"^Synapse \| .*(restart|running and enabled)")),
    ("users and admin tokens", re.compile(r"^(Synapse \| .*: user |Admin tokens)")),
    ("certificates", re.compile(r"^TLS certificates")),
    ("database", re.compile(r"^Database")),
    ("proxy and firewall", re.compile(r"^(Proxy|Firewall)")),
    ("federation check", re.compile(r"^Federation check")),
]


def timed_run(inventory: str) -> tuple[int, float, list[tuple[str, float]]]:
    """Run the deploy; the return code, its wall time (including pyinfra's own start) and each
    operation's time, from its 'Starting operation' line to the next one (one host: operations run
    one after another)."""
    start = time.monotonic()
    process = subprocess.Popen([PYINFRA, inventory, "deploy.py", "-y"], cwd=REPO_ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    marks: list[tuple[str, float]] = [("(connect, facts, planning)", start)]
    tail: list[str] = []
    for line in process.stdout:
        tail = (tail + [line])[-60:]
        match = STARTING.match(line.strip())
        if match:
            marks.append((match.group(1), time.monotonic()))
    code = process.wait()
    end = time.monotonic()
    if code != 0:
        print("".join(tail))
    spans = [(name, (marks[i + 1][1] if i + 1 < len(marks) else end) - at) for i, (name, at) in enumerate(marks)]
    return code, end - start, spans


def background_venv_seconds(info: dict) -> float | None:
    """How long the venv's background job ran (its log's birth to its status file's write), or
    None when there was no job or the file system keeps no birth times."""
    result = hosts.ssh(info["hosts"]["hs1"]["address"], info["ssh_key"], info["known_hosts"],
                       "stat -c '%.3W %.3Y' /var/lib/federate/venv-install.log /var/lib/federate/venv-install.status")
    try:
        (born, _), (_, ended) = (line.split() for line in result.stdout.split("\n")[:2])
        return float(ended) - float(born) if float(born) > 0 else None
    except ValueError:
        return None


def kind_of(name: str) -> str:
    if name.startswith("("):
        return name
    return next((kind for kind, pattern in KINDS if pattern.search(name)), "the rest (config files, keys, units)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--release", choices=rootfs.RELEASES, default=rootfs.DEFAULT_RELEASE)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="default")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    topology = {"hosts": {"hs1": {"homeservers": HOMESERVERS, "host_data": VARIANTS[args.variant]}}}
    lab = Lab(f"prof{os.getpid() % 10000}", root=REPO_ROOT, log=lambda _: None)
    try:
        info = lab.up(topology, release=args.release)
        code, total, spans = timed_run(info["inventory"])
        print(f"cold deploy, 1 host ({args.release}, {args.variant}), 2 homeservers: {total:.1f} s"
              f"{'' if code == 0 else f' (FAILED, exit {code})'}")
        print(f"\nslowest {args.top} operations:")
        for name, seconds in sorted(spans, key=lambda span: -span[1])[:args.top]:
            print(f"  {seconds:6.1f} s  {name}")
        by_kind: dict[str, float] = defaultdict(float)
        for name, seconds in spans:
            by_kind[kind_of(name)] += seconds
        print("\nby kind:")
        for kind, seconds in sorted(by_kind.items(), key=lambda item: -item[1]):
            print(f"  {seconds:6.1f} s  {100 * seconds / total:4.0f} %  {kind}")
        background = background_venv_seconds(info)
        if background is not None:
            print(f"\nthe venv, made in the background beside the packages: {background:.1f} s (not in the times above "
                  "but what the wait for it took)")
        return code
    finally:
        lab.down()


if __name__ == "__main__":
    raise SystemExit(main())
