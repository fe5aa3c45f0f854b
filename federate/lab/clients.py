"""Real Matrix clients (matrix-nio) talking to lab homeservers, for the demo and the tests.

Clients resolve names through the lab DNS and trust the lab CA, exactly like a user's
client would with real DNS and a public CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import ssl
import time
import uuid
from urllib.parse import quote
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver
from nio import (AsyncClient, AsyncClientConfig, DownloadResponse, JoinError, JoinResponse, LoginResponse, RoomCreateResponse,
                 RoomMessagesResponse, RoomMessageText, RoomPreset, RoomSendResponse, UploadResponse)

from federate.checker.http import resolve_address


class LabResolver(AbstractResolver):
    def __init__(self, dns_server: str):
        self.dns_server = dns_server

    async def resolve(self, host, port=0, family=socket.AF_INET):
        address = await asyncio.to_thread(resolve_address, host, self.dns_server)
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self):
        pass


@dataclass
class Account:
    server_name: str
    base_url: str  # https://public_host
    localpart: str
    password: str

    @property
    def user_id(self) -> str:
        return f"@{self.localpart}:{self.server_name}"


# One login per user and process: Synapse rate-limits logins, and a device per check adds up.
# Keyed by the DNS server and password too: another lab (or a redeployed one) may have the same
# user ID on a different homeserver, where the old token is unknown.
_sessions: dict[tuple[str, str, str], tuple[str, str]] = {}  # -> (device ID, access token)


def _session_key(account: Account, dns_server: str) -> tuple[str, str, str]:
    return account.user_id, dns_server or "", hashlib.sha256(account.password.encode()).hexdigest()


# nio retries rate limits and time-outs forever by default: a check must end with an answer.
CLIENT_CONFIG = AsyncClientConfig(max_limit_exceeded=2, max_timeouts=2, request_timeout=30,
                                  max_timeout_retry_wait_time=10)


async def login(account: Account, dns_server: str, ca_file: str) -> AsyncClient:
    client = AsyncClient(account.base_url, account.user_id, config=CLIENT_CONFIG)
    connector = aiohttp.TCPConnector(resolver=LabResolver(dns_server),
                                     ssl=ssl.create_default_context(cafile=ca_file))
    client.client_session = aiohttp.ClientSession(connector=connector)
    key = _session_key(account, dns_server)
    if key in _sessions:
        device_id, token = _sessions[key]
        client.restore_login(account.user_id, device_id, token)
        return client
    reply = await client.login(account.password, device_name="federate-probe")
    if not isinstance(reply, LoginResponse):
        await client.close()
        raise RuntimeError(f"login of {account.user_id} failed: {reply}")
    _sessions[key] = (reply.device_id, reply.access_token)
    return client


async def _sync_until(client: AsyncClient, found, deadline: float):
    """Sync until `found(sync_response)` returns a value (or the deadline passes)."""
    while time.monotonic() < deadline:
        reply = await client.sync(timeout=2000)
        value = found(reply)
        if value is not None:
            return value
    return None


async def _wait_for_invite(client: AsyncClient, room_id: str, deadline: float) -> bool:
    # nio keeps the invites of every sync so far: an invite in an earlier sync is not missed
    return bool(await _sync_until(client, lambda _: True if room_id in client.invited_rooms else None, deadline))


async def _wait_for_message(client: AsyncClient, room_id: str, body: str, deadline: float):
    def seen(reply):
        joined = getattr(getattr(reply, "rooms", None), "join", {}) or {}
        room = joined.get(room_id)
        for event in (room.timeline.events if room else []):
            if isinstance(event, RoomMessageText) and event.body == body:
                return time.monotonic()
        return None
    return await _sync_until(client, seen, deadline)


@dataclass
class FederationResult:
    room_id: str
    latencies: list[float]  # seconds from accepted by the origin to seen on the other side, both ways


async def room_across_servers(a: Account, b: Account, dns_server: str, ca_file: str,
                              messages: int = 1, timeout: float = 60.0) -> FederationResult:
    """a creates a room, invites b, b joins over federation, and messages flow both ways."""
    deadline = time.monotonic() + timeout
    first, second = await login(a, dns_server, ca_file), await login(b, dns_server, ca_file)
    try:
        created = await first.room_create(name=f"federate probe {uuid.uuid4().hex[:8]}", invite=[b.user_id])
        room_id = getattr(created, "room_id", None)
        if room_id is None:
            raise RuntimeError(f"{a.user_id} could not create a room inviting {b.user_id}: {created}")
        if not await _wait_for_invite(second, room_id, deadline):
            raise RuntimeError(f"{b.user_id} never saw the invite to {room_id}")
        joined = await second.join(room_id)
        if isinstance(joined, JoinError):
            raise RuntimeError(f"{b.user_id} could not join {room_id}: {joined}")
        await first.sync(timeout=0)
        return FederationResult(room_id, await _exchange(first, second, room_id, messages, deadline))
    finally:
        await first.close()
        await second.close()


async def _exchange(first: AsyncClient, second: AsyncClient, room_id: str, messages: int, deadline: float) -> list[float]:
    """Messages both ways in a room both joined; the latency of each."""
    latencies = []
    for i in range(messages):
        for sender, receiver in ((first, second), (second, first)):
            body = f"ping {i} from {sender.user_id} {uuid.uuid4().hex[:6]}"
            sent = await sender.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})
            if not isinstance(sent, RoomSendResponse):
                raise RuntimeError(f"{sender.user_id} could not send: {sent}")
            # Timed from the origin server accepting the event (a rate-limited send waits
            # before that), to the other side's sync showing it: federation plus delivery.
            start = time.monotonic()
            seen_at = await _wait_for_message(receiver, room_id, body, deadline)
            if seen_at is None:
                raise RuntimeError(f"{receiver.user_id} never saw {body!r}")
            latencies.append(seen_at - start)
    return latencies


async def exchange_in_room(a: Account, b: Account, room_id: str, dns_server: str, ca_file: str,
                           timeout: float = 90.0) -> list[float]:
    """A message each way in a room a and b already share (after a move, an upgrade)."""
    deadline = time.monotonic() + timeout
    first, second = await login(a, dns_server, ca_file), await login(b, dns_server, ca_file)
    try:
        await first.sync(timeout=0)
        await second.sync(timeout=0)
        return await _exchange(first, second, room_id, 1, deadline)
    finally:
        await first.close()
        await second.close()


async def room_bodies(account: Account, room_id: str, dns_server: str, ca_file: str, limit: int = 100) -> list[str]:
    """The text of the last `limit` messages of a room, as `account` sees them now."""
    client = await login(account, dns_server, ca_file)
    try:
        messages = await client.room_messages(room_id, start="", limit=limit)
        if not isinstance(messages, RoomMessagesResponse):
            raise RuntimeError(f"{account.user_id}: history of {room_id} unavailable: {messages}")
        return [e.body for e in messages.chunk if isinstance(e, RoomMessageText)]
    finally:
        await client.close()


async def seed(account: Account, dns_server: str, ca_file: str, rooms: int, messages: int,
               files: int, file_size: int) -> dict:
    """A homeserver with some history, for backup and restore figures: `rooms` rooms of
    `messages` messages each, and `files` uploads of `file_size` random bytes."""
    client = await login(account, dns_server, ca_file)
    try:
        for r in range(rooms):
            room = await client.room_create(name=f"federate seed {r}")
            if not isinstance(room, RoomCreateResponse):
                raise RuntimeError(f"{account.user_id} could not create a room: {room}")
            for m in range(messages):
                sent = await client.room_send(room.room_id, "m.room.message", {"msgtype": "m.text", "body": f"seed {r}.{m}"})
                if not isinstance(sent, RoomSendResponse):  # a rate limit must not seed less than reported
                    raise RuntimeError(f"{account.user_id} could not send: {sent}")
        uploaded = {}
        for f in range(files):
            data = os.urandom(file_size)
            upload, _ = await client.upload(lambda *_, d=data: d, content_type="application/octet-stream",
                                            filename=f"seed{f}.bin", filesize=len(data))
            if not isinstance(upload, UploadResponse):
                raise RuntimeError(f"upload failed: {upload}")
            uploaded[upload.content_uri] = hashlib.sha256(data).hexdigest()
        return {"rooms": rooms, "messages": rooms * messages, "media": uploaded}
    finally:
        await client.close()



async def join_via(client: AsyncClient, room_id: str, server_name: str) -> JoinResponse | JoinError:
    """Join a room through a named server (room IDs no longer carry one; nio's join() has no `via`)."""
    url = f"{client.homeserver}/_matrix/client/v3/join/{quote(room_id)}?via={quote(server_name)}"
    async with client.client_session.post(url, json={}, headers={
            "Authorization": f"Bearer {client.access_token}"}) as reply:
        body = await reply.json(content_type=None)
    if reply.status == 200 and "room_id" in body:
        return JoinResponse(body["room_id"])
    return JoinError(body.get("error", f"HTTP {reply.status}"), body.get("errcode"))


@contextlib.contextmanager
def _quiet_schema_warnings():
    """matrix-nio logs "Error validating response" when an error answer (M_FORBIDDEN) does not fit
    the schema of the success it expected; while refusals are the point, that line is noise."""
    nio_logger = logging.getLogger("nio.responses")
    level = nio_logger.level
    nio_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        nio_logger.setLevel(level)


async def attempts_from_outside(outsider: Account, insider: Account, dns_server: str, ca_file: str) -> dict:
    """What `outsider`'s server gets when it reaches for `insider`'s server: an invite, a profile
    lookup and a join of a public room. Returns nio responses (errors when refused)."""
    outside = await login(outsider, dns_server, ca_file)
    inside = await login(insider, dns_server, ca_file)
    try:
        room = await outside.room_create(name="federate probe: outside")
        if not isinstance(room, RoomCreateResponse):
            raise RuntimeError(f"{outsider.user_id} could not create a room: {room}")
        public = await inside.room_create(preset=RoomPreset.public_chat, name="federate probe: public")
        if not isinstance(public, RoomCreateResponse):
            raise RuntimeError(f"{insider.user_id} could not create a public room: {public}")
        with _quiet_schema_warnings():  # the refusals are expected, not malformed answers
            return {
                "invite": await outside.room_invite(room.room_id, insider.user_id),
                "profile lookup": await outside.get_profile(insider.user_id),
                "join": await join_via(outside, public.room_id, insider.server_name),
            }
    finally:
        await outside.close()
        await inside.close()


async def leave_traces(account: Account, dns_server: str, ca_file: str) -> dict:
    """A room with a message and an uploaded file, to look for after repairs and upgrades."""
    client = await login(account, dns_server, ca_file)
    try:
        room = await client.room_create(name="federate traces")
        if not isinstance(room, RoomCreateResponse):
            raise RuntimeError(f"{account.user_id} could not create a room: {room}")
        await client.room_send(room.room_id, "m.room.message", {"msgtype": "m.text", "body": "still here"})
        data = b"federate media " * 1000
        upload, _ = await client.upload(lambda *_: data, content_type="application/octet-stream",
                                        filename="kept.bin", filesize=len(data))
        if not isinstance(upload, UploadResponse):
            raise RuntimeError(f"upload failed: {upload}")
        return {"room_id": room.room_id, "mxc": upload.content_uri, "sha256": hashlib.sha256(data).hexdigest()}
    finally:
        await client.close()


async def find_traces(account: Account, dns_server: str, ca_file: str, traces: dict) -> tuple[list, str]:
    """(message bodies of the traces room, sha256 of the uploaded file as downloaded now)."""
    client = await login(account, dns_server, ca_file)
    try:
        messages = await client.room_messages(traces["room_id"], start="", limit=50)
        if not isinstance(messages, RoomMessagesResponse):
            raise RuntimeError(f"room history unavailable: {messages}")
        media = await client.download(traces["mxc"])
        if not isinstance(media, DownloadResponse):
            raise RuntimeError(f"media unavailable: {media}")
        return [getattr(e, "body", None) for e in messages.chunk], hashlib.sha256(media.body).hexdigest()
    finally:
        await client.close()
