"""Which requests the proxy sends to which workers (README, "Workers"), for nginx and caddy alike.

The endpoint lists are those of Synapse's docs (workers.md): the first route whose pattern matches the
raw request URI (path and query, as Synapse routes it) wins; whatever no route matches goes to the
main process. Endpoints Synapse lets workers serve only with conditions this deploy does not set up
(GET-only ones, room pagination, SSO, the admin API) stay with the main process.
"""

from __future__ import annotations

from dataclasses import dataclass

from federate.settings import Homeserver

# Federation endpoints any generic worker serves (workers.md, "Federation requests"), besides
# inbound transactions, which go by source address so that one server's transactions reach one worker.
INBOUND_FEDERATION = "^/_matrix/federation/v1/send/"
FEDERATION_READER_PATTERNS = (
    "^/_matrix/federation/v1/version$", "^/_matrix/federation/v1/event/", "^/_matrix/federation/v1/state/",
    "^/_matrix/federation/v1/state_ids/", "^/_matrix/federation/v1/backfill/",
    "^/_matrix/federation/v1/get_missing_events/", "^/_matrix/federation/v1/publicRooms",
    "^/_matrix/federation/v1/query/", "^/_matrix/federation/v1/make_join/", "^/_matrix/federation/v1/make_leave/",
    "^/_matrix/federation/(v1|v2)/send_join/", "^/_matrix/federation/(v1|v2)/send_leave/",
    "^/_matrix/federation/v1/make_knock/", "^/_matrix/federation/v1/send_knock/",
    "^/_matrix/federation/(v1|v2)/invite/", "^/_matrix/federation/v1/event_auth/",
    "^/_matrix/federation/v1/timestamp_to_event/", "^/_matrix/federation/v1/exchange_third_party_invite/",
    "^/_matrix/federation/v1/user/devices/", "^/_matrix/key/v2/query", "^/_matrix/federation/v1/hierarchy/",
)

# Client endpoints any generic worker serves for every method (workers.md: sync, client API,
# encryption, registration/login, event sending, user directory search).
CLIENT_READER_PATTERNS = (
    "^/_matrix/client/(r0|v3)/sync$", "^/_matrix/client/(api/v1|r0|v3)/events$",
    "^/_matrix/client/(api/v1|r0|v3)/initialSync$", "^/_matrix/client/(api/v1|r0|v3)/rooms/[^/]+/initialSync$",
    "^/_matrix/client/(api/v1|r0|v3|unstable)/createRoom$", "^/_matrix/client/(api/v1|r0|v3|unstable)/publicRooms$",
    "^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/joined_members$",
    "^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/context/.*$",
    "^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/members$",
    "^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/state$", "^/_matrix/client/v1/rooms/.*/hierarchy$",
    "^/_matrix/client/(v1|unstable)/rooms/.*/relations/", "^/_matrix/client/v1/rooms/.*/threads$",
    "^/_matrix/client/unstable/im.nheko.summary/summary/.*$", "^/_matrix/client/(r0|v3|unstable)/account/3pid$",
    "^/_matrix/client/(r0|v3|unstable)/account/whoami$", "^/_matrix/client/(r0|v3|unstable)/account/deactivate$",
    "^/_matrix/client/(r0|v3)/delete_devices$", "^/_matrix/client/(api/v1|r0|v3|unstable)/devices(/|$)",
    "^/_matrix/client/versions$", "^/_matrix/client/(api/v1|r0|v3|unstable)/voip/turnServer$",
    "^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/event/",
    "^/_matrix/client/(api/v1|r0|v3|unstable)/joined_rooms$",
    "^/_matrix/client/v1/rooms/.*/timestamp_to_event$",
    "^/_matrix/client/(api/v1|r0|v3|unstable/.*)/rooms/.*/aliases",
    "^/_matrix/client/(api/v1|r0|v3|unstable)/search$", "^/_matrix/client/(r0|v3|unstable)/user/.*/filter(/|$)",
    "^/_matrix/client/(api/v1|r0|v3|unstable)/directory/room/.*$",
    "^/_matrix/client/(r0|v3|unstable)/capabilities$", "^/_matrix/client/(r0|v3|unstable)/notifications$",
    # encryption
    "^/_matrix/client/(r0|v3|unstable)/keys/query$", "^/_matrix/client/(r0|v3|unstable)/keys/changes$",
    "^/_matrix/client/(r0|v3|unstable)/keys/claim$", "^/_matrix/client/(r0|v3|unstable)/room_keys/",
    "^/_matrix/client/(r0|v3|unstable)/keys/upload", "^/_matrix/client/(api/v1|r0|v3|unstable)/keys/device_signing/upload$",
    "^/_matrix/client/(api/v1|r0|v3|unstable)/keys/signatures/upload$",
    # registration and login
    "^/_matrix/client/(api/v1|r0|v3|unstable)/login$", "^/_matrix/client/(r0|v3|unstable)/register$",
    "^/_matrix/client/(r0|v3|unstable)/register/available$",
    "^/_matrix/client/v1/register/m.login.registration_token/validity$",
    "^/_matrix/client/(r0|v3|unstable)/password_policy$",
    # event sending
    "^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/redact", "^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/send",
    "^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/state/",
    "^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/(join|invite|leave|ban|unban|kick)$",
    "^/_matrix/client/(api/v1|r0|v3|unstable)/join/", "^/_matrix/client/(api/v1|r0|v3|unstable)/knock/",
    "^/_matrix/client/(api/v1|r0|v3|unstable)/profile/",
    # user directory
    "^/_matrix/client/(r0|v3|unstable)/user_directory/search$",
)

# The media repository (workers.md, "synapse.app.media_repository"); /_synapse/media/ is not proxied.
MEDIA_PATTERNS = ("^/_matrix/media/", "^/_matrix/client/v1/media/", "^/_matrix/federation/v1/media/")

# Endpoints to route to a stream's writer (workers.md, "Stream writers").
STREAM_PATTERNS = {
    "typing": ("^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/typing",),
    "to_device": ("^/_matrix/client/(r0|v3|unstable)/sendToDevice/",),
    "account_data": ("^/_matrix/client/(r0|v3|unstable)/.*/tags", "^/_matrix/client/(r0|v3|unstable)/.*/account_data"),
    "receipts": ("^/_matrix/client/(r0|v3|unstable)/rooms/.*/receipt",
                 "^/_matrix/client/(r0|v3|unstable)/rooms/.*/read_markers"),
    "presence": ("^/_matrix/client/(api/v1|r0|v3|unstable)/presence/",),
}


def with_query(pattern: str) -> str:
    """A docs pattern made to match a raw URI with a query: an end of path may be followed by '?'
    ([?] rather than an escape, so the pattern needs no escaping in nginx's or caddy's quoting)."""
    if pattern.endswith("(/|$)"):
        return pattern.removesuffix("(/|$)") + "(/|[?]|$)"
    if pattern.endswith("$"):
        return pattern.removesuffix("$") + "([?]|$)"
    return pattern


@dataclass(frozen=True)
class Route:
    name: str                 # what the proxy calls its upstream and matcher (unique in a site)
    ports: tuple[int, ...]    # the workers' listeners on 127.0.0.1
    patterns: tuple[str, ...]  # as matched against the raw URI
    balance: str = ""         # "" round robin; "source": by client address; "token": by access token


def worker_routes(hs: Homeserver) -> list[Route]:
    """The homeserver's routes in the order they are tried (none without listening workers)."""
    w, routes = hs.workers, []
    for stream, patterns in STREAM_PATTERNS.items():
        routes.append(Route(stream, _ports(w.of_kind(stream)), patterns))
    routes.append(Route("media", _ports(w.of_kind("media")), MEDIA_PATTERNS))
    routes.append(Route("inbound", _ports(w.readers), (INBOUND_FEDERATION,), "source"))
    routes.append(Route("federation", _ports(w.readers), FEDERATION_READER_PATTERNS))
    # one user's requests (sync above all) to one worker, which keeps its caches warm
    routes.append(Route("client", _ports(w.of_kind("client")), CLIENT_READER_PATTERNS, "token"))
    return [Route(r.name, r.ports, tuple(map(with_query, r.patterns)), r.balance) for r in routes if r.ports]


def _ports(workers) -> tuple[int, ...]:
    return tuple(port for _, port in workers)
