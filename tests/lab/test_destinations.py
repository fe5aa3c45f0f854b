"""Issue 13: `federate destinations` on the shared lab, through the real CLI.

alice (alpha.test) and bob (beta.test) share a room; with beta.test's proxy stopped, alpha.test fails
to reach it and backs off, and a message from alice waits in its queue. The command shows beta.test
failing (first failure, next attempt, the shared room, the checker's closed-port hint); once the proxy
runs again, `--reset` lets the queued message out at once (the seconds from the fix to delivery are
printed). The internal homeserver lists only its whitelisted partner; with its Synapse stopped, it is
one line and the others are still listed. nginx on hs2 and that Synapse always run again at the end:
the lab is left as it was found.

Then metrics (a copy of the inventory, deployed and at the end undeployed again): alpha.test's on
hs1's lab address for the controller only, beta.test's on loopback. The controller scrapes it, hs2
cannot connect, nothing new answers on hs2; a re-run changes nothing; with beta.test's proxy stopped
the command shows alpha.test's queued PDU. With hs1 alone unable to reach beta.test (an
OUTPUT reject on hs1, removed at the end), the hint comes from hs1's own point of view.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid

import pytest
from nio import RoomMessagesResponse, RoomSendResponse

from conftest import SCANNED_PORTS, federate, inventory_deployed, open_ports, reachable_from
from federate.lab import prove
from federate.lab.clients import login, room_across_servers
from federate.lab.runner import assert_converged

pytestmark = pytest.mark.lab

def listed(deployed, server: str, *options: str, inventory: str | None = None) -> tuple[int, dict]:
    """(exit status, {destination: entry}) of `federate destinations --server SERVER --json`."""
    status, homeserver = listed_homeserver(inventory or deployed.inventory, server, *options)
    return status, {d["destination"]: d for d in homeserver["destinations"]}


def listed_homeserver(inventory: str, server: str, *options: str) -> tuple[int, dict]:
    """(exit status, the homeserver's entry) of `federate destinations --server SERVER --json`."""
    result = federate("destinations", inventory, "--server", server, "--json", *options)
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr, result.stderr
    [homeserver] = json.loads(result.stdout)
    assert not homeserver.get("error"), homeserver
    return result.returncode, homeserver


async def fail_then_send(sender, receiver, room_id: str, body: str, info: dict) -> None:
    """A one-time key claim for the receiver fails at once (a federation request without retries that
    counts, unlike a profile lookup) and starts the back-off; the message sent then waits in the
    sender's queue, as after a transaction that gave up (which takes some 10 minutes of retries)."""
    client = await login(sender, info["dns"], info["ca_file"])
    try:
        claim = {"one_time_keys": {receiver.user_id: {"FEDERATE": "signed_curve25519"}}, "timeout": 5000}
        async with client.client_session.post(f"{client.homeserver}/_matrix/client/v3/keys/claim", json=claim,
                                              headers={"Authorization": f"Bearer {client.access_token}"}) as reply:
            assert reply.status == 200, await reply.text()
        await asyncio.sleep(1)  # Synapse stores the back-off in the background
        sent = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})
        assert isinstance(sent, RoomSendResponse), sent
    finally:
        await client.close()


async def arrived(account, room_id: str, body: str, info: dict, timeout: float) -> float | None:
    """The monotonic time the message is in the room's history on the account's homeserver."""
    client = await login(account, info["dns"], info["ca_file"])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            messages = await client.room_messages(room_id, start="", limit=20)
            if isinstance(messages, RoomMessagesResponse) and body in [getattr(e, "body", None)
                                                                       for e in messages.chunk]:
                return time.monotonic()
            await asyncio.sleep(0.5)
        return None
    finally:
        await client.close()


def test_failing_destination_is_explained_and_reset(deployed):
    info = deployed.info
    accounts = prove.accounts(prove.load_settings(deployed.inventory))
    alice, bob, carol = accounts["alpha.test"], accounts["beta.test"], accounts["internal.alpha.test"]
    room_id = asyncio.run(room_across_servers(alice, bob, info["dns"], info["ca_file"])).room_id
    status, healthy = listed(deployed, "alpha.test")
    assert healthy["beta.test"]["status"] == "working" and healthy["beta.test"]["rooms"] >= 1, healthy

    body = f"queued while beta.test is down {uuid.uuid4().hex[:6]}"
    try:
        deployed.ssh("hs2", "systemctl stop nginx")
        started = time.time() * 1000
        asyncio.run(fail_then_send(alice, bob, room_id, body, info))
        status, down = listed(deployed, "alpha.test", "--rooms")
        table = federate("destinations", deployed.inventory, "--server", "alpha.test", "--failing")
        print(table.stdout)  # the README's example
        beta = down["beta.test"]
        assert status == 1 and beta["status"] == "failing", beta
        assert started - 60_000 < beta["failure_ts"] <= beta["retry_last_ts"] < beta["next_attempt_ts"], beta
        assert beta["next_attempt_ts"] == beta["retry_last_ts"] + beta["retry_interval"] > time.time() * 1000
        assert room_id in beta["room_ids"] and beta["rooms"] == len(beta["room_ids"])
        assert "port-closed" in [h["id"] for h in beta["hints"]], beta["hints"]
        assert table.returncode == 1 and "beta.test" in table.stdout and "port-closed" in table.stdout
    finally:
        deployed.ssh("hs2", "systemctl start nginx")
    fixed = time.monotonic()
    reset = federate("destinations", deployed.inventory, "--server", "alpha.test", "--reset", "beta.test")
    assert reset.returncode == 0, reset.stderr
    assert reset.stdout.strip() == "alpha.test: retry timer of beta.test reset: queued events go out now"
    delivered = asyncio.run(arrived(bob, room_id, body, info, timeout=120))
    assert delivered is not None, "the queued message never reached beta.test"
    print(f"fix -> delivery with --reset: {delivered - fixed:.1f}s")
    status, after = listed(deployed, "alpha.test")
    assert after["beta.test"]["status"] == "working" and status == 0, after

    unknown = federate("destinations", deployed.inventory, "--server", "alpha.test", "--reset", "nope.test")
    assert unknown.returncode == 1 and unknown.stderr.startswith(
        "federate: --reset nope.test: alpha.test does not know this destination"), unknown.stderr
    assert "Traceback" not in unknown.stderr

    # the internal homeserver, once it has talked to its partner, knows no one else
    asyncio.run(room_across_servers(carol, alice, info["dns"], info["ca_file"]))
    _, internal = listed(deployed, "internal.alpha.test")
    assert list(internal) == ["alpha.test"] and internal["alpha.test"]["status"] == "working", internal


def test_admin_token_is_root_only_and_never_printed(deployed):
    for host, name in (("hs1", "alpha.test"), ("hs1", "internal.alpha.test"), ("hs2", "beta.test")):
        mode = deployed.ssh(host, f"stat -c '%a %U:%G' /etc/federate/admin /etc/federate/admin/{name}.token").stdout
        assert mode.split("\n")[:2] == ["700 root:root", "600 root:root"], mode
    token = deployed.ssh("hs2", "cat /etc/federate/admin/beta.test.token").stdout.strip()
    result = federate("destinations", deployed.inventory)
    assert token and token not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    unknown = federate("destinations", deployed.inventory, "--server", "nope.test")
    assert unknown.returncode == 2 and unknown.stderr.startswith("federate: --server nope.test: no such homeserver")


def test_a_homeserver_that_is_down_is_one_line(deployed):
    unit = "matrix-synapse@internal.alpha.test"
    try:
        deployed.ssh("hs1", f"systemctl stop {unit}")
        result = federate("destinations", deployed.inventory, "--json")
        table = federate("destinations", deployed.inventory)
    finally:
        deployed.ssh("hs1", f"systemctl start {unit}")
    assert result.returncode == 1 and "Traceback" not in result.stderr + table.stderr
    by_name = {r["server_name"]: r for r in json.loads(result.stdout)}
    assert by_name["internal.alpha.test"]["error"].startswith("internal.alpha.test on hs1: Synapse is down: 127.0.0.1:")
    assert not by_name["alpha.test"].get("error") and not by_name["beta.test"].get("error")
    assert "beta.test" in [d["destination"] for d in by_name["alpha.test"]["destinations"]]
    down = [line for line in table.stdout.splitlines() if line.startswith("internal.alpha.test on hs1")]
    assert down == [f"internal.alpha.test on hs1: cannot list destinations: {by_name['internal.alpha.test']['error']}"]


# --- metrics and the host's own point of view ---------------------------------------------------------

METRICS_PORT = 9000  # the first default metrics port: alpha.test's, and beta.test's on hs2's loopback


def homeserver_data(hosts, host: str, server_name: str) -> dict:
    return next(hs for hs in dict(hosts)[host]["homeservers"] if hs["server_name"] == server_name)


@pytest.fixture(scope="module")
def with_metrics(deployed, tmp_path_factory):
    """The lab inventory with metrics on: alpha.test's on hs1's lab address for the controller only,
    beta.test's on loopback. Deployed, and the lab inventory deployed again at the end."""
    def metrics_on(hosts):
        homeserver_data(hosts, "hs1", "alpha.test")["metrics"] = {"bind": deployed.address("hs1"),
                                                                  "scrapers": [deployed.info["dns"]]}
        homeserver_data(hosts, "hs2", "beta.test")["metrics"] = {}
    with inventory_deployed(deployed, tmp_path_factory.mktemp("metrics") / "metrics.py", metrics_on) as inventory:
        yield inventory


def test_metrics_only_for_the_scraper_and_no_change_on_a_rerun(deployed, with_metrics):
    start = time.monotonic()
    assert_converged(with_metrics)
    print(f"no-op re-run with metrics on: {time.monotonic() - start:.1f}s")
    hs1, hs2 = deployed.address("hs1"), deployed.address("hs2")
    with urllib.request.urlopen(f"http://{hs1}:{METRICS_PORT}/_synapse/metrics", timeout=10) as reply:
        page = reply.read().decode()
    queue = [line for line in page.splitlines() if line.startswith("synapse_federation_transaction_queue_pending")]
    print("\n".join(queue))  # the real names, as the README quotes them
    assert any(line.startswith("synapse_federation_transaction_queue_pending_pdus") for line in queue), queue
    assert any(line.startswith("synapse_federation_transaction_queue_pending_edus") for line in queue), queue
    assert not reachable_from(deployed, "hs2", hs1, METRICS_PORT)  # the firewall: the scraper only
    assert reachable_from(deployed, "hs1", hs1, METRICS_PORT)
    assert open_ports(hs1, SCANNED_PORTS) == {22, 80, 443, 8448, METRICS_PORT}
    assert open_ports(hs2, SCANNED_PORTS) == {22, 80, 443, 8448}  # beta.test's metrics: loopback only
    assert not reachable_from(deployed, "hs1", hs2, METRICS_PORT)
    local = deployed.ssh("hs2", f"curl -sf http://127.0.0.1:{METRICS_PORT}/_synapse/metrics | grep -c '^synapse_'")
    assert int(local.stdout) > 0
    settled, alpha = listed_homeserver(with_metrics, "alpha.test")
    assert (alpha["pending_pdus"], alpha["pending_edus"]) == (0, 0) and "metrics_error" not in alpha, alpha


def test_queued_pdus_while_beta_is_down(deployed, with_metrics):
    info = deployed.info
    accounts = prove.accounts(prove.load_settings(with_metrics))
    alice, bob = accounts["alpha.test"], accounts["beta.test"]
    room_id = asyncio.run(room_across_servers(alice, bob, info["dns"], info["ca_file"])).room_id
    body = f"queued for the metrics {uuid.uuid4().hex[:6]}"
    try:
        deployed.ssh("hs2", "systemctl stop nginx")
        asyncio.run(fail_then_send(alice, bob, room_id, body, info))
        status, alpha = listed_homeserver(with_metrics, "alpha.test")
        table = federate("destinations", with_metrics, "--server", "alpha.test", "--failing")
        print(table.stdout)  # the README's example
        assert status == 1 and alpha["pending_pdus"] >= 1, alpha
        assert f"queued: {alpha['pending_pdus']} PDU" in table.stdout.splitlines()[0], table.stdout
    finally:
        deployed.ssh("hs2", "systemctl start nginx")
    reset = federate("destinations", with_metrics, "--server", "alpha.test", "--reset", "beta.test")
    assert reset.returncode == 0, reset.stderr
    assert asyncio.run(arrived(bob, room_id, body, info, timeout=120)) is not None
    _, alpha = listed_homeserver(with_metrics, "alpha.test")
    assert alpha["pending_pdus"] == 0, alpha


def test_hints_from_the_homeserver_s_own_host(deployed, with_metrics):
    """hs1 alone cannot reach beta.test's ports 443 and 8448 (a reject in its OUTPUT chain: Synapse may
    have the well-known's beta.test:443 cached, or fall back to 8448): the controller's check finds
    beta.test reachable, the probe on hs1 says where hs1 fails."""
    info = deployed.info
    accounts = prove.accounts(prove.load_settings(with_metrics))
    alice, bob = accounts["alpha.test"], accounts["beta.test"]
    room_id = asyncio.run(room_across_servers(alice, bob, info["dns"], info["ca_file"])).room_id
    body = f"held back by hs1's egress {uuid.uuid4().hex[:6]}"
    rule = (f"OUTPUT -d {deployed.address('hs2')} -p tcp -m multiport --dports 443,8448 "
            "-j REJECT --reject-with tcp-reset")
    try:
        deployed.ssh("hs1", f"iptables -I {rule}")
        asyncio.run(fail_then_send(alice, bob, room_id, body, info))
        status, down = listed(deployed, "alpha.test", inventory=with_metrics)
        table = federate("destinations", with_metrics, "--server", "alpha.test", "--failing")
        print(table.stdout)  # the README's example
    finally:
        deployed.ssh("hs1", f"iptables -D {rule}")
    beta = down["beta.test"]
    ids = [h["id"] for h in beta["hints"]]
    assert status == 1 and beta["status"] == "failing", beta
    assert "host-egress" in ids and "port-closed" not in ids and "reachable-now" not in ids, beta["hints"]
    [egress] = [h for h in beta["hints"] if h["id"] == "host-egress"]
    assert egress["message"].startswith(f"hs1 (the homeserver's own host) cannot connect to "
                                        f"{deployed.address('hs2')}:443 (beta.test): ConnectionRefusedError")
    assert "host-egress" in table.stdout
    reset = federate("destinations", with_metrics, "--server", "alpha.test", "--reset", "beta.test")
    assert reset.returncode == 0, reset.stderr
    assert asyncio.run(arrived(bob, room_id, body, info, timeout=120)) is not None
