"""Issue 15 (items 1 and 4): the `full` workers preset behind caddy, on a lab of its own.

alpha.test (hs1, Debian 13, caddy + nftables, PostgreSQL) runs the `full` preset: a federation sender,
federation readers, client readers, a media repository, a pusher, a background worker and writers of
the typing, to_device, account_data, receipts and presence streams. beta.test (hs2, Debian 12) runs
one process. Requests of each kind reach the workers Synapse's docs name for them (their journals
show the requests, the main process's does not); nothing but 22/80/443/8448 answers from outside; a
killed worker comes back; the next run changes nothing; going back to the `federation` preset keeps
the room, its history and the media, converges in one run, and the run after changes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import shlex
import time
import uuid
import pytest

from conftest import LabSession, open_ports, own_lab
from federate.deploy.debian import BOOKWORM
from federate.deploy.proxy import proxy_for
from federate.lab import prove
from federate.lab.clients import login, room_across_servers, room_bodies
from federate.lab.runner import assert_converged, run_deployed, write_inventory
from federate.settings import host_settings

pytestmark = pytest.mark.lab

NAME = "alpha.test"
MAIN = f"matrix-synapse@{NAME}.service"
FULL = ("federation_sender1", "federation_reader1", "federation_reader2", "client_reader1", "client_reader2",
        "media_repository1", "typing_writer1", "to_device_writer1", "account_data_writer1", "receipts_writer1",
        "presence_writer1", "pusher1", "background_worker1")
FEDERATION = ("federation_sender1", "federation_reader1", "federation_reader2")
TOPOLOGY = {"hosts": {
    "hs1": {"release": "trixie",
            "homeservers": [{"server_name": NAME, "users": [{"localpart": "alice"}], "workers": {"preset": "full"}}],
            "host_data": {"proxy": "caddy", "firewall": "nftables", "database": "postgres"}},
    "hs2": {"release": "bookworm", "homeservers": [{"server_name": "beta.test", "users": [{"localpart": "bob"}]}]},
}}
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")


def unit(worker: str) -> str:
    return f"matrix-synapse-worker@{NAME}-{worker}.service"


@pytest.fixture(scope="module")
def full_lab():
    suite_start = time.monotonic()
    with own_lab("f", TOPOLOGY) as session:
        start = time.monotonic()
        run_deployed(session.inventory)
        session.timings["cold_deploy"] = time.monotonic() - start
        session.info["room"] = {}
        yield session
        session.timings["suite_wall_before_lab_down"] = time.monotonic() - suite_start
        print("\nfull workers lab timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in session.timings.items()))


def served_by(lab: LabSession, request: str) -> list[str]:
    """The processes of alpha.test whose journal shows `request` (e.g. 'PUT /_matrix/...'): one command."""
    names = ("main", *FULL)
    units = " ".join(MAIN if name == "main" else unit(name) for name in names)
    out = lab.ssh("hs1", f"for u in {units}; do journalctl -q --no-pager -o cat -u $u | grep -qF -- "
                         f"{shlex.quote(request)} && echo $u; done; true").stdout.split()
    return [name for name in names if (MAIN if name == "main" else unit(name)) in out]


async def _call(account, lab: LabSession, method: str, path: str, **kwargs) -> dict:
    """One client API request of `account` with its access token; the JSON answer."""
    client = await login(account, lab.info["dns"], lab.info["ca_file"])
    try:
        headers = {"Authorization": f"Bearer {client.access_token}", **kwargs.pop("headers", {})}
        async with client.client_session.request(method, account.base_url + path, headers=headers,
                                                 **kwargs) as reply:
            body = await reply.read()
            assert reply.status == 200, (method, path, reply.status, body[:300])
            return {"bytes": body} if not reply.content_type.endswith("json") else await reply.json()
    finally:
        await client.close()


def call(lab: LabSession, who: str, method: str, path: str, **kwargs) -> dict:
    accounts = prove.accounts(prove.load_settings(lab.inventory))
    return asyncio.run(_call(accounts[who], lab, method, path, **kwargs))


def test_federates_both_ways_through_the_workers(full_lab):
    info = full_lab.info
    accounts = prove.accounts(prove.load_settings(full_lab.inventory))
    start = time.monotonic()
    result = asyncio.run(room_across_servers(accounts[NAME], accounts["beta.test"], info["dns"], info["ca_file"],
                                             messages=3))
    full_lab.timings["room_and_3_exchanges"] = time.monotonic() - start
    info["room"] = result.room_id
    inbound = full_lab.journal("hs1", f"matrix-synapse-worker@{NAME}-federation_reader*")
    assert "PUT /_matrix/federation/v1/send/" in inbound  # beta's transactions reached the readers
    assert "PUT /_matrix/federation/v1/send/" not in full_lab.journal("hs1", MAIN)
    outbound = "PUT matrix-federation://beta.test/_matrix/federation/v1/send/"
    assert outbound in full_lab.journal("hs1", unit("federation_sender1"))
    assert outbound not in full_lab.journal("hs1", MAIN)


def test_client_requests_are_served_by_the_client_readers(full_lab):
    # alice's client synced and created the room, sent messages (the federation test)
    for request in ("GET /_matrix/client/v3/sync", "POST /_matrix/client/v3/createRoom",
                    "PUT /_matrix/client/v3/rooms/"):
        where = served_by(full_lab, request)
        assert where and set(where) <= {"client_reader1", "client_reader2"}, (request, where)
    whoami = call(full_lab, NAME, "GET", "/_matrix/client/v3/account/whoami")
    assert whoami["user_id"] == f"@alice:{NAME}"
    assert set(served_by(full_lab, "GET /_matrix/client/v3/account/whoami")) <= {"client_reader1", "client_reader2"}


def test_media_is_uploaded_to_and_downloaded_from_the_media_worker(full_lab):
    name = f"probe-{uuid.uuid4().hex[:8]}.png"
    uploaded = call(full_lab, NAME, "POST", f"/_matrix/media/v3/upload?filename={name}", data=PNG,
                    headers={"Content-Type": "image/png"})
    media_id = uploaded["content_uri"].removeprefix(f"mxc://{NAME}/")
    full_lab.info["media"] = media_id
    assert served_by(full_lab, f"POST /_matrix/media/v3/upload?filename={name}") == ["media_repository1"]
    # alice downloads it from alpha; bob through beta, which fetches it from alpha over federation
    path = f"/_matrix/client/v1/media/download/{NAME}/{media_id}"
    assert call(full_lab, NAME, "GET", path)["bytes"] == PNG
    assert served_by(full_lab, f"GET {path}") == ["media_repository1"]
    assert call(full_lab, "beta.test", "GET", path)["bytes"] == PNG
    assert served_by(full_lab, f"GET /_matrix/federation/v1/media/download/{media_id}") == ["media_repository1"]


def test_typing_and_receipts_are_written_by_their_writers(full_lab):
    room = full_lab.info["room"]
    assert room, "the federation test made the room"
    # IDs unquoted in the path (their characters are allowed there), so the journals show them as sent
    typing = f"/_matrix/client/v3/rooms/{room}/typing/@alice:{NAME}"
    call(full_lab, NAME, "PUT", typing, json={"typing": True, "timeout": 30000})
    assert served_by(full_lab, f"PUT {typing}") == ["typing_writer1"]
    messages = call(full_lab, NAME, "GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1")
    event = messages["chunk"][0]["event_id"]
    receipt = f"/_matrix/client/v3/rooms/{room}/receipt/m.read/{event}"
    call(full_lab, NAME, "POST", receipt, json={})
    assert served_by(full_lab, f"POST {receipt}") == ["receipts_writer1"]
    # bob on beta.test sees both: the writers' streams reach the federation sender
    seen, deadline, since = set(), time.monotonic() + 90, None
    while seen != {"m.typing", "m.receipt"} and time.monotonic() < deadline:
        sync = call(full_lab, "beta.test", "GET", "/_matrix/client/v3/sync",
                    params={"timeout": "5000", **({"since": since} if since else {})})
        since = sync["next_batch"]
        for edu in sync.get("rooms", {}).get("join", {}).get(room, {}).get("ephemeral", {}).get("events", []):
            if edu["type"] == "m.typing" and f"@alice:{NAME}" in edu["content"].get("user_ids", []):
                seen.add("m.typing")
            if edu["type"] == "m.receipt" and event in edu["content"]:
                seen.add("m.receipt")
    assert seen == {"m.typing", "m.receipt"}, seen


def test_only_the_public_ports_answer_from_outside(full_lab):
    assert open_ports(full_lab.address("hs1")) == {22, 80, 443, 8448}
    listening = full_lab.ssh("hs1", "ss -Hltnp").stdout
    workers = [line for line in listening.splitlines() if "python" in line]
    assert len(workers) == 1 + 10, listening  # the main process and the 10 workers the proxy sends to
    assert all(line.split()[3].startswith("127.0.0.1:") for line in workers), listening
    sockets = full_lab.ssh("hs1", f"stat -c '%F %a' /var/lib/matrix-synapse/{NAME}/replication*.sock").stdout
    assert sockets.splitlines() == ["socket 600"] * 6, sockets  # the main process and the 5 stream writers


def test_the_same_routes_behind_nginx_pass_nginx_check(full_lab):
    """alpha.test's full preset behind nginx (not deployed here): its site, with a route and upstream for
    every kind, passes `nginx -t` of hs2's nginx (Debian 12), with hs2's certificate, out of its tree."""
    settings = host_settings("hs2", {
        "synapse_version": "1.163.2", "proxy": "nginx", "firewall": "ufw", "database": "postgres",
        "tls": {"mode": "acme", "acme_directory": "https://acme.test/dir"},
        "homeservers": [{"server_name": NAME, "workers": {"preset": "full"}}]})
    site = proxy_for(settings, BOOKWORM).wanted_sites()[f"/etc/nginx/conf.d/federate-{NAME}.conf"]
    assert site.count("upstream ") == 9
    live = full_lab.ssh("hs2", "grep -h -m2 -E 'ssl_certificate(_key)? ' /etc/nginx/conf.d/federate-beta.test.conf"
                        ).stdout.split("\n")
    site = (site.replace(f"ssl_certificate /etc/letsencrypt/live/{NAME}/fullchain.pem;", live[0].strip())
            .replace(f"ssl_certificate_key /etc/letsencrypt/live/{NAME}/privkey.pem;", live[1].strip()))
    folder = "/tmp/federate-nginx-check"
    main = f"pid {folder}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{ include {folder}/site.conf; }}\n"
    write = "; ".join(f"echo {base64.b64encode(text.encode()).decode()} | base64 -d > {folder}/{name}"
                      for name, text in (("site.conf", site), ("nginx.conf", main)))
    try:
        checked = full_lab.ssh("hs2", f"mkdir -p {folder} && {write} && nginx -t -c {folder}/nginx.conf 2>&1",
                               check=False)
    finally:
        full_lab.ssh("hs2", f"rm -rf {folder}")
    assert checked.returncode == 0 and "test is successful" in checked.stdout, checked.stdout


def test_every_worker_runs_as_the_homeserver_in_its_sandbox(full_lab):
    units = [MAIN, *map(unit, FULL)]
    out = full_lab.ssh("hs1", "; ".join(f"systemctl show -p ActiveState -p User -p ProtectSystem --value {u} "
                                        "| tr '\\n' ' '; echo" for u in units)).stdout.splitlines()
    assert [sorted(line.split()) for line in out] == [sorted(["active", "synapse_alpha_test", "strict"])] * len(units)


def test_a_killed_worker_is_restarted(full_lab):
    full_lab.assert_restarted_after_kill("hs1", unit("typing_writer1"), seconds=90)


def test_second_run_changes_nothing(full_lab):
    start = time.monotonic()
    full_lab.noop_rerun()
    full_lab.timings["noop_deploy_full"] = time.monotonic() - start


def test_full_to_federation_keeps_the_data_and_converges_in_one_run(full_lab, tmp_path):
    info, room, media = full_lab.info, full_lab.info["room"], full_lab.info.get("media")
    assert room and media, "the earlier tests made the room and the media"
    accounts = prove.accounts(prove.load_settings(full_lab.inventory))
    history = asyncio.run(room_bodies(accounts["beta.test"], room, info["dns"], info["ca_file"]))

    def federation(hosts):
        dict(hosts)["hs1"]["homeservers"][0]["workers"] = {"preset": "federation"}
    inventory = write_inventory(tmp_path / "inventory.py", full_lab.inventory, federation)
    start = time.monotonic()
    run_deployed(inventory)
    full_lab.timings["full_to_federation_deploy"] = time.monotonic() - start
    states = full_lab.ssh("hs1", f"systemctl is-active {MAIN} {' '.join(map(unit, FULL))}", check=False).stdout.split()
    assert states == ["active" if name == "main" or name in FEDERATION else "inactive"
                      for name in ("main", *FULL)], states
    kept = asyncio.run(room_bodies(accounts[NAME], room, info["dns"], info["ca_file"]))
    assert set(history) <= set(kept), (history, kept)
    # the media uploaded through the media worker, now served by the main process
    path = f"/_matrix/client/v1/media/download/{NAME}/{media}"
    assert call(full_lab, NAME, "GET", path)["bytes"] == PNG
    assert "main" in served_by(full_lab, f"GET {path}")
    start = time.monotonic()
    assert_converged(inventory)
    full_lab.timings["noop_deploy_federation"] = time.monotonic() - start
