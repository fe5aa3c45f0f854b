"""Issue 15 (first slice): Synapse workers with Redis, on a lab of their own.

alpha.test (hs1, Debian 12) runs the `federation` preset (one federation sender, two federation
readers, its own Redis on a Unix socket); beta.test (hs2, Debian 13) runs one process. They federate
both ways; inbound transactions are served by alpha's readers and outbound ones sent by its sender,
not by the main process; Redis and replication answer no one outside (only 22/80/443/8448 open);
a killed worker comes back; the next run changes nothing; turning workers off keeps the room and its
history and converges in one run. Times are printed at the end.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import LabSession, open_ports, own_lab
from federate.lab import prove
from federate.lab.clients import exchange_in_room, room_across_servers, room_bodies
from federate.lab.runner import assert_converged, run_deployed, write_inventory

pytestmark = pytest.mark.lab

NAME = "alpha.test"
USER = "synapse_alpha_test"
SOCKET = f"/run/federate-redis/{NAME}/redis.sock"
READERS = ("federation_reader1", "federation_reader2")
SENDER = "federation_sender1"
MAIN = f"matrix-synapse@{NAME}.service"
TOPOLOGY = {"hosts": {
    "hs1": {"release": "bookworm",
            "homeservers": [{"server_name": NAME, "users": [{"localpart": "alice"}],
                             "workers": {"preset": "federation"}}]},
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


def journal(lab: LabSession, unit_pattern: str) -> str:
    return lab.ssh("hs1", f"journalctl -q --no-pager -o cat -u '{unit_pattern}'", check=False).stdout


def test_federates_both_ways_through_the_workers(workers_lab):
    info = workers_lab.info
    accounts = prove.accounts(prove.load_settings(workers_lab.inventory))
    start = time.monotonic()
    result = asyncio.run(room_across_servers(accounts[NAME], accounts["beta.test"], info["dns"], info["ca_file"],
                                             messages=3))
    workers_lab.timings["room_and_3_exchanges"] = time.monotonic() - start
    workers_lab.timings["median_latency_with_workers"] = sorted(result.latencies)[len(result.latencies) // 2]
    info["room"] = result.room_id
    inbound = journal(workers_lab, f"matrix-synapse-worker@{NAME}-federation_reader*")
    assert "PUT /_matrix/federation/v1/send/" in inbound  # beta's transactions reached the readers
    assert "PUT /_matrix/federation/v1/send/" not in journal(workers_lab, MAIN)
    outbound = "PUT matrix-federation://beta.test/_matrix/federation/v1/send/"
    assert outbound in journal(workers_lab, unit(SENDER))  # alpha's transactions left from the sender
    assert outbound not in journal(workers_lab, MAIN)


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
    reader = unit(READERS[0])
    before = workers_lab.ssh("hs1", f"systemctl show -p MainPID --value {reader}").stdout.strip()
    workers_lab.ssh("hs1", f"systemctl kill -s KILL {reader}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = workers_lab.ssh("hs1", f"systemctl is-active {reader}; systemctl show -p MainPID --value {reader}",
                                check=False).stdout.split()
        if state[0] == "active" and state[-1] not in (before, "0"):
            break
        time.sleep(2)
    else:
        raise AssertionError(f"{reader} was not restarted: {state}")


def test_second_run_changes_nothing(workers_lab):
    start = time.monotonic()
    workers_lab.noop_rerun()
    workers_lab.timings["noop_deploy_with_workers"] = time.monotonic() - start


def test_workers_off_keeps_the_room_and_converges_in_one_run(workers_lab, tmp_path):
    info, room = workers_lab.info, workers_lab.info["room"]
    assert room, "the federation test made the room"
    accounts = prove.accounts(prove.load_settings(workers_lab.inventory))
    history = asyncio.run(room_bodies(accounts["beta.test"], room, info["dns"], info["ca_file"]))

    def off(hosts):
        dict(hosts)["hs1"]["homeservers"][0]["workers"] = {"preset": "none"}
    inventory = write_inventory(tmp_path / "inventory.py", workers_lab.inventory, off)
    start = time.monotonic()
    run_deployed(inventory)
    workers_lab.timings["workers_off_deploy"] = time.monotonic() - start
    states = workers_lab.ssh("hs1", f"systemctl is-active {MAIN} federate-redis@{NAME}.service "
                                    f"matrix-synapse-workers@{NAME}.target {' '.join(map(unit, (SENDER, *READERS)))}",
                             check=False).stdout.split()
    assert states == ["active"] + ["inactive"] * 5, states
    assert workers_lab.ssh("hs1", f"test -e {SOCKET} || echo gone").stdout.strip() == "gone"
    latencies = asyncio.run(exchange_in_room(accounts[NAME], accounts["beta.test"], room, info["dns"], info["ca_file"]))
    workers_lab.timings["median_latency_without_workers"] = sorted(latencies)[len(latencies) // 2]
    kept = asyncio.run(room_bodies(accounts[NAME], room, info["dns"], info["ca_file"]))
    assert set(history) <= set(kept), (history, kept)
    assert_converged(inventory)
