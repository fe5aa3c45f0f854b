"""Issue: internal + external homeservers on one host; the federation policy proven with real clients."""

from __future__ import annotations

import asyncio

import pytest
from nio import JoinError, ProfileGetError, RoomCreateResponse, RoomInviteError, RoomPreset

from federate import prove
from federate.clients import login, room_across_servers
from federate.probe import https_get

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def users(deployed):
    return prove.accounts(prove.load_settings(deployed.inventory))


def test_internal_server_federates_with_its_whitelisted_partner(deployed, users):
    info = deployed.info
    result = asyncio.run(room_across_servers(users["internal.alpha.test"], users["alpha.test"],
                                             info["dns"], info["ca_file"], messages=2))
    assert len(result.latencies) == 4


async def _refusals(info, users) -> dict:
    """What the other host's server (beta.test) gets when it reaches for the internal server."""
    bob = await login(users["beta.test"], info["dns"], info["ca_file"])
    carol = await login(users["internal.alpha.test"], info["dns"], info["ca_file"])
    carol_id = users["internal.alpha.test"].user_id
    try:
        outcome = {}
        room = await bob.room_create(name="outside")
        assert isinstance(room, RoomCreateResponse), room
        outcome["invite"] = await bob.room_invite(room.room_id, carol_id)
        outcome["profile"] = await bob.get_profile(carol_id)
        alias_local = f"open{room.room_id[1:7].lower()}"
        public = await carol.room_create(alias=alias_local, preset=RoomPreset.public_chat, name="internal public")
        assert isinstance(public, RoomCreateResponse), public
        outcome["join"] = await bob.join(f"#{alias_local}:internal.alpha.test")
        return outcome
    finally:
        for client in (bob, carol):
            await client.close()


def test_internal_server_refuses_the_other_hosts_server(deployed, users):
    outcome = asyncio.run(_refusals(deployed.info, users))
    assert isinstance(outcome["invite"], RoomInviteError), outcome["invite"]
    assert isinstance(outcome["profile"], ProfileGetError), outcome["profile"]
    assert isinstance(outcome["join"], JoinError), outcome["join"]
    # That this is policy, not breakage, is shown by the partner test above passing.


def test_each_server_name_has_its_own_well_known_and_certificate(deployed):
    info = deployed.info
    for name, expected in (("alpha.test", "matrix.alpha.test:443"),
                           ("internal.alpha.test", "internal.alpha.test:443"),
                           ("beta.test", "beta.test:443")):
        reply = https_get(name, 443, "/.well-known/matrix/server", ca_file=info["ca_file"], dns_server=info["dns"])
        assert reply.json() == {"m.server": expected}
        names = [value for kind, value in reply.peer_certificate.get("subjectAltName", ()) if kind == "DNS"]
        assert name in names
