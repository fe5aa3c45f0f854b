"""Issue 15: Synapse workers with Redis, on a lab of their own, through their lifecycle.

alpha.test (hs1, Debian 12) runs the `federation` preset (one federation sender, two federation
readers, its own Redis on a Unix socket) with metrics on; beta.test (hs2, Debian 13) runs one
process. They federate both ways; inbound transactions are served by alpha's readers and outbound
ones sent by its sender, not by the main process; Redis and replication answer no one outside (only
22/80/443/8448 open); a killed worker comes back; the next run changes nothing; the federation
queue `federate destinations` shows is the sender worker's. Then one state after the other on the
same lab: more workers (3 readers, 2 senders), fewer again (the removed units stopped, systemd
reloaded), alpha.test retired (workers, target and Redis stopped and disabled, data kept) and back,
workers off. Each change converges in one run (hs1 only: beta.test's data does not change), the
next run changes nothing, the room and its history stay and federation still works. Times are
printed at the end.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import LabSession, federate, open_ports, own_lab
from test_destinations import arrived, fail_then_send, listed_homeserver
from federate.lab import prove
from federate.lab.clients import exchange_in_room, room_across_servers, room_bodies
from federate.lab.runner import assert_converged, run_deploy, run_deployed, write_inventory

pytestmark = pytest.mark.lab

NAME = "alpha.test"
USER = "synapse_alpha_test"
SOCKET = f"/run/federate-redis/{NAME}/redis.sock"
READERS = ("federation_reader1", "federation_reader2")
SENDER = "federation_sender1"
MAIN = f"matrix-synapse@{NAME}.service"
TARGET = f"matrix-synapse-workers@{NAME}.target"
REDIS = f"federate-redis@{NAME}.service"
MAIN_METRICS, SENDER_METRICS = 9000, (9001, 9002)  # the metrics defaults: the main process's, then the senders'
HS1 = ("--limit", "hs1")  # the changes below are alpha.test's: beta.test's host is left alone
TOPOLOGY = {"hosts": {
    "hs1": {"release": "bookworm",
            "homeservers": [{"server_name": NAME, "users": [{"localpart": "alice"}],
                             "workers": {"preset": "federation"}, "metrics": {}}]},
    "hs2": {"release": "trixie", "homeservers": [{"server_name": "beta.test", "users": [{"localpart": "bob"}]}]},
}}


def unit(worker: str) -> str:
    return f"matrix-synapse-worker@{NAME}-{worker}.service"


@pytest.fixture(scope="module")
def workers_lab():
    with own_lab("w", TOPOLOGY) as session:
        start = time.monotonic()
        run_deployed(session.inventory)
        session.timings["cold_deploy"] = time.monotonic() - start
        session.info["room"] = {}
        yield session
        print("\nworkers lab timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in session.timings.items()))


def test_federates_both_ways_through_the_workers(workers_lab):
    info = workers_lab.info
    accounts = prove.accounts(prove.load_settings(workers_lab.inventory))
    start = time.monotonic()
    result = asyncio.run(room_across_servers(accounts[NAME], accounts["beta.test"], info["dns"], info["ca_file"],
                                             messages=3))
    workers_lab.timings["room_and_3_exchanges"] = time.monotonic() - start
    workers_lab.timings["median_latency_with_workers"] = sorted(result.latencies)[len(result.latencies) // 2]
    info["room"] = result.room_id
    inbound = workers_lab.journal("hs1", f"matrix-synapse-worker@{NAME}-federation_reader*")
    assert "PUT /_matrix/federation/v1/send/" in inbound  # beta's transactions reached the readers
    assert "PUT /_matrix/federation/v1/send/" not in workers_lab.journal("hs1", MAIN)
    outbound = "PUT matrix-federation://beta.test/_matrix/federation/v1/send/"
    assert outbound in workers_lab.journal("hs1", unit(SENDER))  # alpha's transactions left from the sender
    assert outbound not in workers_lab.journal("hs1", MAIN)


def test_units_user_and_sandbox(workers_lab):
    units = [MAIN, f"federate-redis@{NAME}.service", *map(unit, (SENDER, *READERS))]
    out = workers_lab.ssh("hs1", "; ".join(f"systemctl show -p ActiveState -p User -p ProtectSystem --value {u} "
                                           "| tr '\\n' ' '; echo" for u in units)).stdout.splitlines()
    assert [sorted(line.split()) for line in out] == [sorted(["active", USER, "strict"])] * len(units), out
    assert workers_lab.ssh("hs1", f"systemctl is-active matrix-synapse-workers@{NAME}.target").stdout.strip() == "active"
    modes = workers_lab.ssh("hs1", f"stat -c '%n %U %a' /etc/matrix-synapse/{NAME}/redis.password "
                                   f"/etc/matrix-synapse/{NAME}/replication.secret /run/federate-redis/{NAME}").stdout
    assert modes.split("\n")[:3] == [f"/etc/matrix-synapse/{NAME}/redis.password {USER} 600",
                                     f"/etc/matrix-synapse/{NAME}/replication.secret {USER} 600",
                                     f"/run/federate-redis/{NAME} {USER} 700"], modes


def test_redis_and_replication_answer_no_one_outside(workers_lab):
    assert open_ports(workers_lab.address("hs1")) == {22, 80, 443, 8448}
    # from the other host too: the Redis port, the readers' and the main listener stay closed
    probes = " ".join(str(p) for p in (6379, 8008, 9008, 9009))
    out = workers_lab.ssh("hs2", f"for p in {probes}; do timeout 3 bash -c \"exec 3<>/dev/tcp/"
                                 f"{workers_lab.address('hs1')}/$p\" 2>/dev/null && echo open $p; done; true").stdout
    assert "open" not in out, out
    listening = workers_lab.ssh("hs1", "ss -Hltnp").stdout
    assert "redis" not in listening, listening  # no TCP at all
    assert all(line.split()[3].startswith("127.0.0.1:") for line in listening.splitlines()
               if "python" in line), listening
    # (Redis has no network namespace of ours to list its socket in: PrivateNetwork)
    sockets = workers_lab.ssh("hs1", f"stat -c '%F %U %a' {SOCKET} /var/lib/matrix-synapse/{NAME}/replication.sock").stdout
    assert sockets.splitlines() == [f"socket {USER} 600"] * 2, sockets


def test_redis_admits_only_its_homeserver_on_its_channels(workers_lab):
    password = f"/etc/matrix-synapse/{NAME}/redis.password"
    as_user = f"REDISCLI_AUTH=$(cat {password}) runuser -u {USER} -- redis-cli -s {SOCKET}"
    out = workers_lab.ssh("hs1", f"runuser -u nobody -- redis-cli -s {SOCKET} ping 2>&1; "
                                 f"runuser -u {USER} -- redis-cli -s {SOCKET} ping 2>&1; "
                                 f"{as_user} publish {NAME}/probe x 2>&1; {as_user} publish beta.test/probe x 2>&1; "
                                 f"{as_user} config get requirepass 2>&1", check=False).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    assert "Permission denied" in lines[0] or "Could not connect" in lines[0], out  # not the homeserver's user
    assert lines[1].startswith("NOAUTH"), out  # no password
    assert lines[2].isdigit(), out  # its own channel
    assert lines[3].startswith("NOPERM") and lines[4].startswith("NOPERM"), out  # another's channel, admin


def test_a_killed_worker_is_restarted(workers_lab):
    workers_lab.assert_restarted_after_kill("hs1", unit(READERS[0]), seconds=60)


def test_second_run_changes_nothing(workers_lab):
    start = time.monotonic()
    workers_lab.noop_rerun()
    workers_lab.timings["noop_deploy_with_workers"] = time.monotonic() - start


def pending_on(lab: LabSession, port: int) -> int | None:
    """The queued PDUs on one metrics listener of hs1 (None: the page has no such gauge)."""
    page = lab.ssh("hs1", f"curl -sf http://127.0.0.1:{port}/_synapse/metrics").stdout
    values = [float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
              if line.startswith("synapse_federation_transaction_queue_pending_pdus")]
    return int(sum(values)) if values else None


def test_the_queue_destinations_shows_is_the_sender_worker_s(workers_lab):
    info, room = workers_lab.info, workers_lab.info["room"]
    accounts = prove.accounts(prove.load_settings(workers_lab.inventory))
    alice, bob = accounts[NAME], accounts["beta.test"]
    body = f"queued in the sender {time.monotonic():.0f}"
    try:
        workers_lab.ssh("hs2", "systemctl stop nginx")
        asyncio.run(fail_then_send(alice, bob, room, body, info))
        _, alpha = listed_homeserver(workers_lab.inventory, NAME)
        in_sender, in_main = pending_on(workers_lab, SENDER_METRICS[0]), pending_on(workers_lab, MAIN_METRICS)
        print(f"while beta.test is down: destinations {alpha.get('pending_pdus')} PDUs, sender {in_sender}, "
              f"main process {in_main}")
        assert alpha["pending_pdus"] >= 1 and "metrics_error" not in alpha, alpha
        assert in_sender >= 1 and in_main in (None, 0), (in_sender, in_main)  # the queue is the worker's
    finally:
        workers_lab.ssh("hs2", "systemctl start nginx")
    reset = federate("destinations", workers_lab.inventory, "--server", NAME, "--reset", "beta.test")
    assert reset.returncode == 0, reset.stderr
    assert asyncio.run(arrived(bob, room, body, info, timeout=180)) is not None
    deadline = time.monotonic() + 60
    while (pending := listed_homeserver(workers_lab.inventory, NAME)[1]["pending_pdus"]) and time.monotonic() < deadline:
        time.sleep(2)
    assert pending == 0


def unit_times(lab: LabSession, units: list[str]) -> dict[str, tuple[int, int]]:
    """unit -> (when it last stopped, when it last started), systemd's monotonic microseconds."""
    times = {}
    for u in units:
        shown = dict(line.split("=", 1) for line in lab.ssh("hs1", f"systemctl show -p InactiveEnterTimestampMonotonic "
                                                                   f"-p ActiveEnterTimestampMonotonic {u}").stdout.split())
        times[u] = (int(shown["InactiveEnterTimestampMonotonic"]), int(shown["ActiveEnterTimestampMonotonic"]))
    return times


def assert_reloaded(lab: LabSession, units: list[str]):
    """No unit waits for a daemon reload: `systemctl status` would warn that it changed on disk."""
    out = lab.ssh("hs1", "; ".join(f"systemctl show -p NeedDaemonReload --value {u}; systemctl status {u} 2>&1 "
                                   "| grep -c 'changed on disk'" for u in units), check=False).stdout.split()
    assert out == ["no", "0"] * len(units), dict(zip(units, zip(out[::2], out[1::2])))


def changed(lab: LabSession, tmp_path, label: str, *mutations) -> str:
    """A copy of the lab's inventory with `mutations` (none: the lab's own), deployed on hs1 and
    timed, then run again to find no change; the inventory."""
    inventory = write_inventory(tmp_path / f"{label}.py", lab.inventory, *mutations) if mutations else lab.inventory
    start = time.monotonic()
    result = run_deploy(inventory, *HS1)
    lab.timings[f"{label}_deploy"] = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-4000:]
    start = time.monotonic()
    assert_converged(inventory, *HS1)
    lab.timings[f"{label}_noop"] = time.monotonic() - start
    return inventory


def assert_room_kept_and_federating(lab: LabSession, inventory: str, label: str):
    info, room = lab.info, lab.info["room"]
    accounts = prove.accounts(prove.load_settings(inventory))
    latencies = asyncio.run(exchange_in_room(accounts[NAME], accounts["beta.test"], room, info["dns"],
                                             info["ca_file"]))
    lab.timings[f"median_latency_{label}"] = sorted(latencies)[len(latencies) // 2]
    kept = asyncio.run(room_bodies(accounts[NAME], room, info["dns"], info["ca_file"]))
    assert set(lab.info["history"]) <= set(kept), (lab.info["history"], kept)


def more(hosts):
    dict(hosts)["hs1"]["homeservers"][0]["workers"] = {"preset": "federation", "federation_readers": 3,
                                                       "federation_senders": 2}


def test_more_workers_converge_in_one_run_and_the_senders_restart_together(workers_lab, tmp_path):
    info, room = workers_lab.info, workers_lab.info["room"]
    accounts = prove.accounts(prove.load_settings(workers_lab.inventory))
    info["history"] = asyncio.run(room_bodies(accounts["beta.test"], room, info["dns"], info["ca_file"]))
    senders = [unit("federation_sender1"), unit("federation_sender2")]
    before = unit_times(workers_lab, senders)
    inventory = changed(workers_lab, tmp_path, "more_workers", more)
    every = [*senders, *map(unit, (*READERS, "federation_reader3"))]
    states = workers_lab.ssh("hs1", f"systemctl is-active {' '.join(every)}", check=False).stdout.split()
    assert states == ["active"] * 5, states
    after = unit_times(workers_lab, senders)
    print(f"senders (stopped, started) before: {before}; after: {after}")
    # federation_sender_instances changed: the running sender stopped, then both started together
    assert after[senders[0]][0] > before[senders[0]][1], (before, after)
    assert max(stop for stop, _ in after.values()) < min(start for _, start in after.values()), after
    listening = workers_lab.ssh("hs1", "ss -Hltn").stdout
    for port in (9010, *SENDER_METRICS):  # the third reader, both senders' metrics
        assert f"127.0.0.1:{port} " in listening, listening
    assert_reloaded(workers_lab, every)
    assert_room_kept_and_federating(workers_lab, inventory, "more_workers")
    _, alpha = listed_homeserver(inventory, NAME)  # both senders' queues read and added up
    assert alpha["pending_pdus"] == 0 and "metrics_error" not in alpha, alpha


def test_fewer_workers_converge_in_one_run_and_systemd_is_reloaded(workers_lab, tmp_path):
    removed = [unit("federation_sender2"), unit("federation_reader3")]
    changed(workers_lab, tmp_path, "fewer_workers")  # the lab's own inventory: back to the preset
    kept = [unit(SENDER), *map(unit, READERS)]
    states = workers_lab.ssh("hs1", f"systemctl is-active {' '.join(kept + removed)}", check=False).stdout.split()
    assert states == ["active"] * 3 + ["inactive"] * 2, states
    assert_reloaded(workers_lab, kept + removed)
    left = workers_lab.ssh("hs1", f"ls /etc/matrix-synapse/{NAME}/workers; ls -d /etc/systemd/system/"
                                  f"matrix-synapse-worker@{NAME}-*.d").stdout.split()
    assert left == [f"{w}.yaml" for w in sorted((SENDER, *READERS))] + [
        f"/etc/systemd/system/{unit(w)}.d" for w in sorted((SENDER, *READERS))], left
    assert_room_kept_and_federating(workers_lab, workers_lab.inventory, "fewer_workers")


def test_retired_homeserver_stops_its_workers_and_redis_and_keeps_its_data(workers_lab, tmp_path):
    kept = (f"/etc/matrix-synapse/{NAME}/signing.key /etc/matrix-synapse/{NAME}/redis.password "
            f"/etc/matrix-synapse/{NAME}/replication.secret /etc/matrix-synapse/{NAME}/workers/{SENDER}.yaml")
    hashes = workers_lab.ssh("hs1", f"sha256sum {kept}").stdout

    def retired(hosts):  # hs1 keeps only alpha.test's well-known: a host needs a homeserver or a delegation
        data = dict(hosts)["hs1"]
        data["homeservers"] = []
        data["delegations"] = [{"server_name": NAME, "public_host": "beta.test"}]
        data["verify"] = {**data.get("verify", {}), "after_deploy": False}
    inventory = write_inventory(tmp_path / "retired.py", workers_lab.inventory, retired)
    start = time.monotonic()
    run = run_deploy(inventory, *HS1)
    workers_lab.timings["retire_deploy"] = time.monotonic() - start
    assert run.returncode == 0, run.stderr[-4000:]
    assert (f"{NAME} is not in the inventory any more: stopped and disabled (its workers and their Redis too), "
            "no data deleted.") in run.stderr
    every = [MAIN, TARGET, REDIS, *map(unit, (SENDER, *READERS))]
    out = workers_lab.ssh("hs1", "; ".join(f"echo $(systemctl is-active {u}) $(systemctl is-enabled {u})"
                                           for u in every), check=False).stdout.splitlines()
    states = dict(zip(every, out))
    assert all(s.split()[0] == "inactive" for s in states.values()), states
    assert [states[u].split()[1] for u in (MAIN, TARGET, REDIS)] == ["disabled"] * 3, states
    assert workers_lab.ssh("hs1", "pgrep -u " + USER + " || echo none").stdout.strip() == "none"
    assert workers_lab.ssh("hs1", f"sha256sum {kept}").stdout == hashes
    database = workers_lab.ssh("hs1", "runuser -u postgres -- psql -Atc \"SELECT count(*) FROM pg_database WHERE "
                                      "datname = 'synapse_alpha_test'\"").stdout.strip()
    assert database == "1"
    start = time.monotonic()
    run_deployed(workers_lab.inventory)  # back, with its workers: both hosts (beta.test's back-off from it reset)
    workers_lab.timings["back_deploy"] = time.monotonic() - start
    states = workers_lab.ssh("hs1", f"systemctl is-active {' '.join(every)}; systemctl is-enabled {TARGET} {REDIS}",
                             check=False).stdout.split()
    assert states == ["active"] * len(every) + ["enabled"] * 2, states
    assert workers_lab.ssh("hs1", f"sha256sum {kept}").stdout == hashes
    reset = federate("destinations", workers_lab.inventory, "--server", "beta.test", "--reset", NAME)
    assert reset.returncode == 0, reset.stderr
    assert_room_kept_and_federating(workers_lab, workers_lab.inventory, "back_from_retired")


def test_workers_off_keeps_the_room_and_converges_in_one_run(workers_lab, tmp_path):
    def off(hosts):
        dict(hosts)["hs1"]["homeservers"][0]["workers"] = {"preset": "none"}
    inventory = changed(workers_lab, tmp_path, "workers_off", off)
    states = workers_lab.ssh("hs1", f"systemctl is-active {MAIN} {REDIS} {TARGET} "
                                    f"{' '.join(map(unit, (SENDER, *READERS)))}", check=False).stdout.split()
    assert states == ["active"] + ["inactive"] * 5, states
    assert workers_lab.ssh("hs1", f"test -e {SOCKET} || echo gone").stdout.strip() == "gone"
    # the package stays, its own instance masked: no Redis runs at all
    redis = workers_lab.ssh("hs1", "systemctl is-enabled redis-server; systemctl is-active redis-server; "
                                   "pgrep -x redis-server || echo none", check=False).stdout.split()
    assert redis == ["masked", "inactive", "none"], redis
    assert_reloaded(workers_lab, [TARGET, REDIS, *map(unit, (SENDER, *READERS))])
    assert_room_kept_and_federating(workers_lab, inventory, "without_workers")
