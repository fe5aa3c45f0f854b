"""Benchmark on a throwaway lab: inbound federation into one homeserver, as one process and then
with the `federation` workers preset, on the same host and the same data, in one run.

    .venv/bin/python bench/workers_federation.py [--rooms 4] [--messages 40] [--release bookworm|trixie]

alpha.test (hs1, PostgreSQL) receives; beta.test (hs2, one process) sends. @bob:beta.test makes
ROOMS public rooms and @alice:alpha.test joins them over federation. Then, per configuration (first
alpha as one process, then alpha's host alone redeployed with `workers: {"preset": "federation"}`,
the redeploy timed), bob sends MESSAGES messages in every room, the rooms side by side (one sender
task each), and alice's /sync on alpha watches for them. An event counts as accepted by the receiver when
alice's /sync shows it (persisted and served to a client), not when alpha answers the transaction.

Printed per configuration: events/s accepted by alpha (all events / first send to last seen) beside
the rate beta accepted the sends at; send->remote-seen latency (from beta's answer to the send to
alice's /sync showing it) p50/p90/max; CPU seconds of each service on both hosts during the burst
(`systemctl show -p CPUUsageNSec`, or where a host has no CPU accounting, as lab hosts on a cgroup
v1 controller, the times of the unit's processes in /proc); the inbound transactions in alpha's logs
(per second, PDUs per transaction, the /send request's time, CPU and database time, which process
handled the PDUs); the machine's load and busy share (the lab hosts share this machine's kernel, and so its load).

Every homeserver of the lab has its client and federation rate limits raised (rc_message,
rc_room_creation, rc_joins, rc_federation): the figures are Synapse's work, not its throttles, and
a refused send stops the run with an error. Asserts nothing about speed. The lab is removed at the
end, even on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from nio import RoomCreateResponse, RoomMessageText, RoomPreset, RoomSendResponse, SyncResponse

from federate.lab import Lab, hosts, prove, rootfs
from federate.lab.clients import Account, join_via, login
from federate.lab.runner import REPO_ROOT, error_lines, run_deploy, write_inventory

RECEIVER, SENDER = "alpha.test", "beta.test"
UNLIMITED = {"per_second": 1000, "burst_count": 10000}
# Raised so that the burst measures Synapse, not its rate limiters (defaults: 10 requests/s from one
# server before each waits 500 ms; remote joins 10 then one per 100 s).
LIMITS = {"rc_message": UNLIMITED, "rc_room_creation": UNLIMITED,
          "rc_joins": {"local": UNLIMITED, "remote": UNLIMITED},
          "rc_federation": {"window_size": 1000, "sleep_limit": 10000, "sleep_delay": 500,
                            "reject_limit": 10000, "concurrent": 100}}
TOPOLOGY = {"hosts": {
    "hs1": {"homeservers": [{"server_name": RECEIVER, "users": [{"localpart": "alice"}], "synapse_extra": LIMITS}]},
    "hs2": {"homeservers": [{"server_name": SENDER, "users": [{"localpart": "bob"}], "synapse_extra": LIMITS}]},
}}
# Every event of a burst in one /sync answer: a "limited" timeline would hide some.
SYNC_FILTER = {"room": {"timeline": {"limit": 1000}}, "presence": {"not_types": ["*"]}}
SERVICES = r"^(matrix-synapse|postgresql|nginx|federate-redis)"


def timed(label: str, func):
    start = time.monotonic()
    value = func()
    print(f"{label:<40} {time.monotonic() - start:7.1f} s", flush=True)
    return value


def checked_deploy(inventory: str, what: str, *extra: str) -> None:
    result = run_deploy(inventory, *extra, timeout=2400)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed:\n{error_lines(result.stderr + result.stdout)}\n{result.stderr[-2000:]}")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


# --- the lab's clients ----------------------------------------------------------------------------

async def make_rooms(sender: Account, receiver: Account, rooms: int, dns: str, ca_file: str) -> list[str]:
    """`rooms` public rooms of the sender, each joined by the receiver over federation."""
    creator, joiner = await login(sender, dns, ca_file), await login(receiver, dns, ca_file)
    try:
        room_ids = []
        for n in range(rooms):
            room = await creator.room_create(preset=RoomPreset.public_chat, name=f"federate bench {n}")
            if not isinstance(room, RoomCreateResponse):
                raise RuntimeError(f"{sender.user_id} could not create a room: {room}")
            joined = await join_via(joiner, room.room_id, sender.server_name)
            if not getattr(joined, "room_id", None):
                raise RuntimeError(f"{receiver.user_id} could not join {room.room_id}: {joined}")
            room_ids.append(room.room_id)
        return room_ids
    finally:
        await creator.close()
        await joiner.close()


async def say_hello(account: Account, room_ids: list[str], dns: str, ca_file: str) -> None:
    """A message of `account` in every room: its server then contacts the others, which drop any
    backoff they had for it (they may have failed to reach it while it restarted)."""
    client = await login(account, dns, ca_file)
    try:
        for room_id in room_ids:
            await _send(client, room_id, f"hello {uuid.uuid4().hex[:6]}", 1, {})
    finally:
        await client.close()


class NotSeen(RuntimeError):
    pass


@dataclass
class Burst:
    started: float  # monotonic, the first send
    accepted: dict[str, float] = field(default_factory=dict)  # body -> the sender's server answered the send
    seen: dict[str, float] = field(default_factory=dict)  # body -> the receiver's /sync showed it


async def burst(sender: Account, receiver: Account, room_ids: list[str], messages: int, dns: str, ca_file: str,
                timeout: float) -> Burst:
    """`messages` messages in every room, the rooms side by side; returns when the receiver saw all."""
    tag = f"bench {uuid.uuid4().hex[:8]}"
    writer, watcher = await login(sender, dns, ca_file), await login(receiver, dns, ca_file)
    try:
        first = await watcher.sync(timeout=0, sync_filter=SYNC_FILTER)  # from now on only new events
        if not isinstance(first, SyncResponse):
            raise RuntimeError(f"{receiver.user_id} could not sync: {first}")
        result = Burst(time.monotonic())
        watching = asyncio.create_task(_watch(watcher, tag, len(room_ids) * messages, result.seen))
        sending = asyncio.gather(*(_send(writer, room_id, f"{tag} {r}", messages, result.accepted)
                                   for r, room_id in enumerate(room_ids)))
        try:
            await asyncio.wait_for(asyncio.gather(sending, watching), timeout)
        except TimeoutError:
            raise NotSeen(f"after {timeout:.0f} s the receiver saw {len(result.seen)} of "
                               f"{len(room_ids) * messages} events ({len(result.accepted)} sent)") from None
        finally:
            sending.cancel()
            watching.cancel()
        return result
    finally:
        await writer.close()
        await watcher.close()


async def _send(client, room_id: str, prefix: str, messages: int, accepted: dict[str, float]) -> None:
    for m in range(messages):
        body = f"{prefix}.{m}"
        sent = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})
        if not isinstance(sent, RoomSendResponse):  # a refused send must stop the run, not shrink it
            raise RuntimeError(f"{client.user_id} could not send in {room_id}: {sent}")
        accepted[body] = time.monotonic()


async def _watch(client, tag: str, expected: int, seen: dict[str, float]) -> None:
    while len(seen) < expected:
        reply = await client.sync(timeout=5000, sync_filter=SYNC_FILTER)
        now = time.monotonic()
        if not isinstance(reply, SyncResponse):
            raise RuntimeError(f"{client.user_id} could not sync: {reply}")
        for room_id, room in reply.rooms.join.items():
            if room.timeline.limited:
                raise RuntimeError(f"/sync left events of {room_id} out (limited timeline): raise the filter's limit")
            for event in room.timeline.events:
                if isinstance(event, RoomMessageText) and event.body.startswith(tag):
                    seen.setdefault(event.body, now)


# --- what the hosts and the machine did -----------------------------------------------------------

# CPU seconds by unit from /proc (utime, stime and reaped children's), run on a host by its python3
PROC_CPU = """python3 -c '
import collections, json, os
usage, tick = collections.Counter(), os.sysconf("SC_CLK_TCK")
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        groups = open(f"/proc/{pid}/cgroup").read().split()
        times = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[11:15]
    except OSError:
        continue
    units = [g.rsplit("/", 1)[-1] for g in groups if g.endswith(".service")]
    if units:
        usage[units[0]] += sum(map(int, times)) / tick
print(json.dumps(usage))'"""


class Hosts:
    def __init__(self, info: dict):
        self.info = info
        self.cpu_source = "systemctl show -p CPUUsageNSec"

    def ssh(self, host: str, command: str) -> str:
        result = hosts.ssh(self.info["hosts"][host]["address"], Path(self.info["ssh_key"]),
                           Path(self.info["known_hosts"]), command, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{host}: {command!r} failed: {result.stderr.strip()}")
        return result.stdout

    def cpu_seconds(self, host: str) -> dict[str, float]:
        """CPU seconds used so far by each running service of interest, by unit: systemd's accounting,
        or where a host has none (cgroup v1 without cpuacct), its processes' times in /proc."""
        units = [line.split()[0] for line in self.ssh(host, "systemctl list-units --type=service --state=running "
                                                            "--no-legend --plain").splitlines() if line.strip()]
        wanted = [unit for unit in units if re.match(SERVICES, unit)]
        shown = self.ssh(host, "systemctl show -p Id -p CPUUsageNSec " + " ".join(wanted))
        usage = {}
        for block in shown.strip().split("\n\n"):
            fields = dict(line.split("=", 1) for line in block.splitlines())
            if not fields.get("CPUUsageNSec", "").isdigit():
                self.cpu_source = "/proc/<pid>/stat of each unit's processes"
                return {unit: seconds for unit, seconds in json.loads(self.ssh(host, PROC_CPU)).items()
                        if re.match(SERVICES, unit)}
            usage[fields["Id"]] = int(fields["CPUUsageNSec"]) / 1e9
        return usage

    def journal(self, host: str, since: float, until: float) -> list[tuple[str, str]]:
        """(unit, message) of the Synapse units' log lines in [since, until] (epoch seconds)."""
        out = self.ssh(host, f"journalctl -q --no-pager -o json --output-fields=_SYSTEMD_UNIT,MESSAGE "
                             f"--since @{int(since)} --until @{int(until) + 1} -u 'matrix-synapse*'")
        lines = []
        for raw in out.splitlines():
            entry = json.loads(raw)
            if isinstance(entry.get("MESSAGE"), str):
                lines.append((entry.get("_SYSTEMD_UNIT", "?"), entry["MESSAGE"]))
        return lines

    def journal_suppressed(self, host: str, since: float) -> int:
        """Log lines journald dropped for its rate limit since `since` (the log figures miss them)."""
        out = self.ssh(host, f"journalctl -q --no-pager -o cat -u systemd-journald --since @{int(since)}")
        return sum(int(n) for n in re.findall(r"Suppressed (\d+) messages from", out))


class MachineLoad:
    """The 1-minute load average, sampled every 2 s, and the CPU busy share from /proc/stat."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        self._start = _cpu_times()
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()
        end = _cpu_times()
        self.busy = 1 - (end[1] - self._start[1]) / max(1, end[0] - self._start[0])

    def _sample(self):
        while True:
            self.samples.append(float(Path("/proc/loadavg").read_text().split()[0]))
            if self._stop.wait(2):
                return


def _cpu_times() -> tuple[int, int]:
    """(all, idle + iowait) jiffies of the machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values), values[3] + values[4]


# --- one configuration ----------------------------------------------------------------------------

@dataclass
class Measured:
    burst: Burst
    cpu: dict[str, dict[str, float]]  # host -> unit -> CPU seconds during the burst
    log: list[tuple[str, str]]  # the receiver's Synapse log lines during the burst
    suppressed: int
    load: MachineLoad
    wall: float
    cpu_source: str


def warm_up(accounts: dict[str, Account], room_ids: list[str], dns: str, ca_file: str) -> None:
    """Untimed: one message per room until a round is seen whole (keys fetched, connections and
    workers up). A sender that restarted, or that failed to reach the receiver while it restarted,
    sends only the newest event of each room at first (Synapse's catch-up): an earlier round may
    never be seen whole."""
    asyncio.run(say_hello(accounts[RECEIVER], room_ids, dns, ca_file))
    for _ in range(5):
        try:
            asyncio.run(burst(accounts[SENDER], accounts[RECEIVER], room_ids, 1, dns, ca_file, 60))
            return
        except NotSeen as error:
            print(f"  (warm-up: {error}; again)", flush=True)
    raise RuntimeError("warm-up: no round of messages reached the receiver whole in 5 tries")


def measure(lab: Hosts, args, room_ids: list[str], accounts: dict[str, Account]) -> Measured:
    dns, ca_file = lab.info["dns"], lab.info["ca_file"]
    warm_up(accounts, room_ids, dns, ca_file)
    time.sleep(1.5)  # so the journal window of the burst (whole seconds) leaves the warm-up out
    before = {host: lab.cpu_seconds(host) for host in ("hs1", "hs2")}
    since = time.time()
    with MachineLoad() as load:
        result = asyncio.run(burst(accounts[SENDER], accounts[RECEIVER], room_ids, args.messages, dns, ca_file,
                                   args.timeout))
    until = time.time()
    after = {host: lab.cpu_seconds(host) for host in ("hs1", "hs2")}
    cpu = {host: {unit: after[host][unit] - before[host].get(unit, 0.0) for unit in after[host]}
           for host in after}
    return Measured(result, cpu, lab.journal("hs1", since, until), lab.journal_suppressed("hs1", since), load,
                    until - since, lab.cpu_source)


RECEIVED = re.compile(r"Received txn (\S+) from (\S+)\. \(PDUs: (\d+), EDUs: (\d+)\)")
PROCESSED = re.compile(r"Processed request: ([\d.]+)sec/[\d.]+sec ru=\(([\d.]+)sec, ([\d.]+)sec\) "
                       r"db=\(([\d.]+)sec/([\d.]+)sec/(\d+)\).*\"(\w+) (\S+)")


def report(title: str, m: Measured, rooms: int, messages: int) -> dict:
    b = m.burst
    total = rooms * messages
    seen_for = max(b.seen.values()) - b.started
    sent_for = max(b.accepted.values()) - b.started
    latencies = [1000 * (b.seen[body] - b.accepted[body]) for body in b.accepted]
    print(f"\n== {title} ==")
    print(f"  events sent: {rooms} rooms x {messages} = {total}, the rooms side by side")
    print(f"  accepted by {RECEIVER} (seen by its client's /sync): {total / seen_for:6.1f} events/s "
          f"(all in {seen_for:.1f} s)")
    print(f"  accepted by {SENDER} from its client:            {total / sent_for:6.1f} events/s "
          f"(all in {sent_for:.1f} s)")
    print(f"  send -> remote-seen latency: p50 {percentile(latencies, 0.5):.0f} ms, "
          f"p90 {percentile(latencies, 0.9):.0f} ms, max {max(latencies):.0f} ms")
    report_transactions(m.log, m.wall, m.suppressed)
    print(f"  CPU seconds during the burst ({m.wall:.1f} s; % of one CPU; from {m.cpu_source}):")
    for host in ("hs1", "hs2"):
        for unit, seconds in sorted(m.cpu[host].items(), key=lambda item: -item[1]):
            if seconds >= 0.05:
                print(f"    {host} {unit:<58} {seconds:6.2f} s {100 * seconds / m.wall:5.0f} %")
        print(f"    {host} all of these: {sum(m.cpu[host].values()):.2f} s = "
              f"{1000 * sum(m.cpu[host].values()) / total:.0f} ms per event")
    print(f"  machine ({os.cpu_count()} CPUs, other labs included): busy {100 * m.load.busy:.0f} %, 1-min load "
          f"mean {statistics.mean(m.load.samples):.1f} max {max(m.load.samples):.1f}")
    return {"rate": total / seen_for, "p50": percentile(latencies, 0.5), "p90": percentile(latencies, 0.9),
            "max": max(latencies), "load": statistics.mean(m.load.samples)}


def report_transactions(log: list[tuple[str, str]], wall: float, suppressed: int) -> None:
    """What alpha's logs say about the inbound transactions from beta and who handled their PDUs."""
    received = [match for _, line in log if (match := RECEIVED.search(line)) and match[2] == SENDER]
    pdus = [int(match[3]) for match in received if int(match[3])]
    requests = [match for _, line in log if (match := PROCESSED.search(line))]
    sends = [r for r in requests if r[7] == "PUT" and r[8].startswith("/_matrix/federation/v1/send/")]
    received_by = Counter(unit for unit, line in log if RECEIVED.search(line))
    handled_by = Counter(unit for unit, line in log if "handling received PDU in room" in line)
    persisted = [r for r in requests if "/_synapse/replication/fed_send_events" in r[8]]
    if suppressed:
        print(f"  (journald dropped {suppressed} log lines of hs1: the log figures below miss some)")
    if not pdus:
        print("  inbound transactions: none from the sender in the receiver's log")
        return
    print(f"  inbound transactions from {SENDER}: {len(received)} ({len(pdus)} with PDUs) = "
          f"{len(received) / wall:.1f}/s, PDUs per transaction with PDUs mean {statistics.mean(pdus):.1f} "
          f"max {max(pdus)} (sum {sum(pdus)})")
    if sends:
        cpu = _mean(sends, 2) + _mean(sends, 3)
        # database times are summed over the request's queries, which run side by side (a room each)
        print(f"    /send answered in mean {1000 * _mean(sends, 1):.0f} ms (CPU {1000 * cpu:.0f} ms; summed over its "
              f"queries: database {1000 * _mean(sends, 5):.0f} ms, waiting for a connection "
              f"{1000 * _mean(sends, 4):.0f} ms)")
    print(f"    received by: {_counts(received_by)}; PDUs handled by: {_counts(handled_by)}")
    if persisted:
        # the main process persists in its own queue: the call's database time is not in the log line
        print(f"    events persisted through the main process (replication): {len(persisted)} calls, mean "
              f"{1000 * _mean(persisted, 1):.0f} ms each")


def _mean(matches, group: int) -> float:
    return statistics.mean(float(m[group]) for m in matches)


def _counts(counter: Counter) -> str:
    return ", ".join(f"{unit.removesuffix('.service')} {n}" for unit, n in counter.most_common()) or "none logged"


# --- the run --------------------------------------------------------------------------------------

def with_workers(hosts_list) -> None:
    dict(hosts_list)["hs1"]["homeservers"][0]["workers"] = {"preset": "federation"}


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"terminated by signal {signum}")  # so the lab is taken down


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=4, help="rooms the sender sends in side by side")
    parser.add_argument("--messages", type=int, default=40, help="messages per room and configuration")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a burst may take to be seen")
    parser.add_argument("--release", choices=rootfs.RELEASES, default=rootfs.DEFAULT_RELEASE)
    args = parser.parse_args()
    lab = Lab(f"wfed{os.getpid() % 10000}", root=REPO_ROOT, log=lambda _: None)
    work = Path(tempfile.mkdtemp(prefix="federate-bench-"))
    try:
        info = timed("lab up (2 hosts)", lambda: lab.up(TOPOLOGY, release=args.release))
        timed("cold deploy (alpha as one process)", lambda: checked_deploy(info["inventory"], "cold deploy"))
        accounts = prove.accounts(prove.load_settings(info["inventory"]))
        room_ids = timed(f"{args.rooms} rooms made, joined over federation", lambda: asyncio.run(make_rooms(
            accounts[SENDER], accounts[RECEIVER], args.rooms, info["dns"], info["ca_file"])))
        lab_hosts = Hosts(info)
        figures = {"one process": report("alpha.test as one process", measure(lab_hosts, args, room_ids, accounts),
                                         args.rooms, args.messages)}
        workers = write_inventory(work / "workers.py", info["inventory"], with_workers)
        # only the receiver's host: the sender must not restart between the two measurements
        timed("\nredeploy of hs1 turning workers on", lambda: checked_deploy(workers, "redeploy with workers",
                                                                             "--limit", "hs1"))
        figures["workers"] = report("alpha.test with the federation preset (1 sender, 2 readers)",
                                    measure(lab_hosts, args, room_ids, accounts), args.rooms, args.messages)
        print("\n" + "\n".join(f"{name:<12} {f['rate']:6.1f} events/s, latency p50 {f['p50']:.0f} ms p90 "
                               f"{f['p90']:.0f} ms max {f['max']:.0f} ms, load {f['load']:.1f}"
                               for name, f in figures.items()))
        return 0
    finally:
        timed("lab down", lab.down)
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    raise SystemExit(main())
