"""The one settings model: inventory host data -> validated, immutable settings.

Every value a deploy uses comes from here. The shape of host data (types, choices, formats) is
federate.host_data's pydantic models; this module checks what spans fields and hosts (ports,
names, certificates, delegations) and resolves defaults. Validation happens for *all* hosts of
the inventory before any operation is planned, and every error names the host and the field.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import re
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from federate.host_data import (LETS_ENCRYPT, HomeserverData, HostData, MetricsData, SshData, TlsData, defaults,
                                first_problem, ours, server_name_problem)

__all__ = ["DEFAULTS", "LETS_ENCRYPT", "Delegation", "Homeserver", "HostSettings", "Lock", "Metrics", "Restore",
           "SettingsError",
           "Ssh", "Tls",
           "User", "Verify", "Workers", "certificate_names", "host_settings", "inventory_settings", "server_name_problem"]

# The library's defaults for host data: an inventory with no group_data gets these. Override
# any of them in the inventory's host data or in group_data/*.py (README, "Settings").
DEFAULTS: dict[str, Any] = defaults()

# Ports the proxy and SSH own on every host; Synapse listeners must stay off them.
RESERVED_PORTS = {22, 80, 443, 8448}
FIRST_SYNAPSE_PORT = 8008
FIRST_METRICS_PORT = 9000  # Synapse's documented metrics port
# Not routed on the internet, so a metrics listener may bind there: the private ranges and the
# shared address space of carrier-grade NAT and overlay VPNs (100.64.0.0/10, e.g. Tailscale).
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
POSTGRES_NAME_LIMIT = 63  # bytes in an identifier (NAMEDATALEN - 1)
OS_USER_LIMIT = 32  # characters useradd accepts in a user name

# Visibility settings an internal profile locks down; each can be overridden per homeserver.
VISIBILITY_DEFAULTS: dict[str, dict[str, Any]] = {
    "external": {
        "allow_public_rooms_over_federation": False,
        "allow_profile_lookup_over_federation": True,
        "allow_device_name_lookup_over_federation": False,
        "enable_room_list_search": True,
        "user_directory": {"enabled": True, "search_all_users": False},
        "require_auth_for_profile_requests": False,
        "limit_profile_requests_to_users_who_share_rooms": False,
    },
    "internal": {
        "allow_public_rooms_over_federation": False,
        "allow_profile_lookup_over_federation": False,
        "allow_device_name_lookup_over_federation": False,
        "enable_room_list_search": False,
        "user_directory": {
            "enabled": True,
            "search_all_users": False,
            "exclude_remote_users": True,
        },
        "require_auth_for_profile_requests": True,
        "limit_profile_requests_to_users_who_share_rooms": True,
    },
}

# Synapse keys the deploy manages itself: the escape hatch may not set them, because
# doing so would silently break the listener, paths, secrets or federation policy.
MANAGED_SYNAPSE_KEYS = frozenset({
    "server_name", "public_baseurl", "serve_server_wellknown", "listeners", "database",
    "pid_file", "log_config", "media_store_path", "signing_key_path", "report_stats",
    "registration_shared_secret", "registration_shared_secret_path", "macaroon_secret_key",
    "form_secret", "federation_domain_whitelist", "ip_range_whitelist",
    "trusted_key_servers", "enable_registration", "max_upload_size", "enable_metrics",
    # workers (README, "Workers")
    "redis", "instance_map", "worker_replication_secret", "worker_replication_secret_path",
    "federation_sender_instances", "send_federation", "worker_app", "worker_name", "worker_listeners",
    "stream_writers", "pusher_instances", "start_pushers", "run_background_tasks_on", "enable_media_repo",
    "media_instance_running_background_jobs",
    *VISIBILITY_DEFAULTS["external"],
})


class SettingsError(ValueError):
    """Invalid inventory data. The message names the host and the field."""

    def __init__(self, host: str, field_path: str, problem: str):
        self.host, self.field, self.problem = host, field_path, problem
        super().__init__(f"host {host}: {field_path}: {problem}")


@dataclass(frozen=True)
class User:
    localpart: str
    admin: bool = False


@dataclass(frozen=True)
class Restore:
    """A backup to restore onto a host where the homeserver has no data yet."""
    folder: str          # absolute, on the controller
    backup_id: str       # sha256 of its manifest: what the host records once restored
    synapse_version: str
    signing_key_sha256: str  # the manifest's: a host with another key holds another identity


# The presets' counts (README, "Workers"), and the most of each a homeserver may ask for.
FEDERATION_PRESET = {"federation_senders": 1, "federation_readers": 2}
# Streams whose writing Synapse's docs (workers.md, "Stream writers") let a worker take over, and
# those of them Synapse allows one writer of only (it refuses to start with more).
STREAMS = ("typing", "to_device", "account_data", "receipts", "presence")
SINGLE_WRITER_STREAMS = ("typing", "to_device", "account_data", "presence")
FULL_PRESET = {**FEDERATION_PRESET, "client_readers": 2, "media_repositories": 1, "pushers": 1,
               "background_workers": 1, **{f"stream_writers.{stream}": 1 for stream in STREAMS}}
MAX_WORKERS = 16
WORKER_PORT_OFFSET = 1000  # default first_port of the homeserver on 8008: 9008
WORKER_PORT_BLOCK = 100  # each next homeserver port's workers a block further: 8009 -> 9108 (at most 53 listeners)


@dataclass(frozen=True)
class Workers:
    """A homeserver's Synapse workers (none: every count 0). Workers with a listener for the proxy get
    ports from first_port on, in this order: federation readers, client readers, media repositories,
    stream writers."""
    preset: str = "none"
    federation_senders: int = 0
    federation_readers: int = 0
    first_port: int = 0
    client_readers: int = 0
    media_repositories: int = 0
    pushers: int = 0
    background_workers: int = 0
    stream_writers: tuple[tuple[str, int], ...] = ()  # (stream, writers) of the streams taken off the main process
    metrics_ports: tuple[int, ...] = ()  # with metrics on, each sender's metrics listener on 127.0.0.1

    @property
    def enabled(self) -> bool:
        return bool(self.names)

    @staticmethod
    def _named(kind: str, count: int) -> tuple[str, ...]:
        return tuple(f"{kind}{n}" for n in range(1, count + 1))

    @property
    def senders(self) -> tuple[str, ...]:
        """Worker names, as in federation_sender_instances."""
        return self._named("federation_sender", self.federation_senders)

    @property
    def pusher_names(self) -> tuple[str, ...]:
        return self._named("pusher", self.pushers)

    @property
    def background_names(self) -> tuple[str, ...]:
        return self._named("background_worker", self.background_workers)

    @property
    def listening(self) -> tuple[tuple[str, str, int], ...]:
        """(kind, worker name, port) of each worker the proxy sends requests to; kind is 'federation',
        'client', 'media' or a stream's name."""
        kinds = [("federation", "federation_reader", self.federation_readers),
                 ("client", "client_reader", self.client_readers),
                 ("media", "media_repository", self.media_repositories),
                 *((stream, f"{stream}_writer", count) for stream, count in self.stream_writers)]
        named = [(kind, name) for kind, prefix, count in kinds for name in self._named(prefix, count)]
        return tuple((kind, name, self.first_port + i) for i, (kind, name) in enumerate(named))

    def of_kind(self, kind: str) -> tuple[tuple[str, int], ...]:
        """(worker name, port) of the listening workers of one kind."""
        return tuple((name, port) for k, name, port in self.listening if k == kind)

    @property
    def readers(self) -> tuple[tuple[str, int], ...]:
        """(worker name, listener port) of each generic worker for inbound federation."""
        return self.of_kind("federation")

    @property
    def writers(self) -> dict[str, list[str]]:
        """stream -> the names of its writers (stream_writers in homeserver.yaml)."""
        return {stream: [name for name, _ in self.of_kind(stream)] for stream, _ in self.stream_writers}

    @property
    def sender_metrics(self) -> tuple[tuple[str, int], ...]:
        """(worker name, metrics port) of each sender: where its federation queue is read."""
        return tuple(zip(self.senders, self.metrics_ports))

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.senders, *(name for _, name, _ in self.listening), *self.pusher_names, *self.background_names)

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(port for _, _, port in self.listening)


@dataclass(frozen=True)
class Metrics:
    """Synapse's metrics listener: on loopback, or on a private address of the host that the
    firewall opens to `scrapers` only."""
    bind: str
    port: int
    scrapers: tuple[str, ...] = ()

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.bind).is_loopback

    @property
    def url(self) -> str:
        """Where the host itself reads it (an IPv6 address in brackets)."""
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}/_synapse/metrics"


@dataclass(frozen=True)
class Homeserver:
    server_name: str
    profile: str
    port: int
    public_host: str
    federation_whitelist: tuple[str, ...] | None
    visibility: Mapping[str, Any]
    users: tuple[User, ...] = ()
    synapse_extra: Mapping[str, Any] = field(default_factory=dict)
    discovery: str = "well-known"
    ip_range_whitelist: tuple[str, ...] = ()  # private ranges its Synapse may contact
    client_allow_ranges: tuple[str, ...] | None = None  # None: the client API answers everyone
    federation_allow_addresses: tuple[str, ...] = ()  # as given: partners outside the inventory
    # Who the proxy lets reach /_matrix/federation and /_matrix/key: None for everyone (external),
    # else the given addresses plus the inventory hosts of its whitelisted partners (internal).
    federation_sources: tuple[str, ...] | None = None
    restore: Restore | None = None  # restore_from, checked against the backup's manifest
    metrics: Metrics | None = None  # None: no metrics listener
    workers: Workers = Workers()

    @property
    def host_name(self) -> str:
        """The DNS part of the server name (a server name may carry a :port)."""
        return self.server_name.split(":")[0]

    @property
    def delegated(self) -> bool:
        return self.public_host != self.host_name

    @property
    def federation_open(self) -> bool:
        """False when an empty whitelist means this server federates with nobody."""
        return self.federation_whitelist is None or len(self.federation_whitelist) > 0

    @property
    def proxy_names(self) -> tuple[str, ...]:
        """Every DNS name the proxy answers (and the certificate covers) for this server.

        With a delegation host the server name points elsewhere; only the API host is ours.
        """
        if self.discovery == "delegated":
            return (self.public_host,)
        return tuple(dict.fromkeys([self.host_name, self.public_host]))

    @property
    def cert_name(self) -> str:
        """The name of this homeserver's certificate (certbot's cert name, provided files' key)."""
        return self.proxy_names[0]

    @property
    def serves_server_well_known(self) -> bool:
        return self.discovery == "well-known"

    @property
    def database_name(self) -> str:
        return database_name(self.server_name)

    @property
    def os_user(self) -> str:
        return os_user(self.server_name)


def database_name(server_name: str) -> str:
    """A homeserver's PostgreSQL role and database: synapse_ and the host name with '.' and '-' as
    '_'. Two names can map to one (a-b.test, a.b.test): validation refuses that on one host."""
    return "synapse_" + re.sub(r"[^a-z0-9]", "_", server_name.split(":")[0])


def os_user(server_name: str) -> str:
    """The OS user a homeserver's Synapse runs as, owning only its own files: its database name, or
    for a name longer than useradd's 32 characters, the first 25 and 6 hex digits of a hash."""
    name, host_name = database_name(server_name), server_name.split(":")[0]
    if len(name) <= OS_USER_LIMIT:
        return name
    return f"{name[:OS_USER_LIMIT - 7]}_{hashlib.sha256(host_name.encode()).hexdigest()[:6]}"


@dataclass(frozen=True)
class Delegation:
    """A server name whose well-known files a plain web host publishes for a Synapse elsewhere."""
    server_name: str
    public_host: str


@dataclass(frozen=True)
class Tls:
    mode: str
    acme_directory: str
    email: str | None
    certificates: Mapping[str, Mapping[str, str]]


@dataclass(frozen=True)
class Verify:
    """The federation check run from the controller at the end of each deploy."""
    after_deploy: bool
    dns_server: str | None  # None: the controller's resolver
    ca_file: str | None     # None: the controller's trusted CAs
    timeout: float


@dataclass(frozen=True)
class Lock:
    """One run at a time per host (federate.pyinfra_ext.lease)."""
    lease: int  # seconds
    wait: int   # seconds


@dataclass(frozen=True)
class Ssh:
    """The firewall's limit on new SSH connections per source address (README, "SSH")."""
    rate_limit: bool = True
    trusted_ranges: tuple[str, ...] = ()  # exempt from the limit; ufw's form (an address without /32)


@dataclass(frozen=True)
class HostSettings:
    host: str
    homeservers: tuple[Homeserver, ...]
    delegations: tuple[Delegation, ...]
    synapse_version: str
    proxy: str
    firewall: str
    database: str
    tls: Tls
    trusted_key_servers: tuple[Mapping[str, Any], ...] | None  # None: Synapse's default
    max_upload_size: str
    ssh_port: int
    secrets_dir: str  # absolute, on the controller: generated user passwords, mode 0600
    verify: Verify
    lock: Lock
    ssh: Ssh = Ssh()


# ---------------------------------------------------------------- checks across fields

def _fail(host: str, path: str, problem: str):
    raise SettingsError(host, path, problem)


def _restore(host: str, path: str, raw: HomeserverData, database: str, synapse_version: str,
             base_dir: Path) -> Restore | None:
    """restore_from, checked before any host is touched: the folder is a backup of this very
    homeserver, made with this database, by a Synapse no newer than the one deployed."""
    if raw.restore_from is None:
        return None
    from packaging.version import Version

    from federate.manifest import BackupError, backup_id, parts, read_manifest

    folder = (base_dir / Path(raw.restore_from).expanduser()).absolute()
    field_path = f"{path}.restore_from"
    try:  # sizes now, hashes only when a restore really runs (a media store can be large)
        manifest = read_manifest(folder, check_hashes=False)
    except BackupError as error:
        _fail(host, field_path, str(error))
    if manifest.get("server_name") != raw.server_name:
        _fail(host, field_path, f"{folder} is a backup of {manifest.get('server_name')!r}, not of "
              f"{raw.server_name!r}: a homeserver's identity cannot move to another name")
    if manifest.get("database") != database:
        _fail(host, field_path, f"{folder} holds a {manifest.get('database')} database and this host uses "
              f"database: {database}: deploy with database: {manifest.get('database')}, then port it")
    if missing := [name for name in parts(database) if name not in manifest["files"]]:
        _fail(host, field_path, f"{folder}: the backup has no {', '.join(missing)}")
    made_by = str(manifest.get("synapse_version", ""))
    try:
        newer = Version(made_by) > Version(synapse_version)
    except ValueError:
        _fail(host, field_path, f"{folder}: the manifest's synapse_version {made_by!r} is not a version")
    if newer:
        _fail(host, field_path, f"{folder} was made by Synapse {made_by}, newer than synapse_version "
              f"{synapse_version}: its schema cannot be used by the older Synapse; deploy {made_by} or newer")
    return Restore(str(folder), backup_id(folder), made_by, manifest["files"]["signing.key"]["sha256"])


def _given_counts(given) -> dict[str, int | None]:
    """The explicit counts of a workers setting, stream writers as 'stream_writers.<stream>'."""
    counts = {key: getattr(given, key) for key in FULL_PRESET if "." not in key}
    counts.update({f"stream_writers.{stream}": getattr(given.stream_writers, stream) for stream in STREAMS})
    return counts


def _workers(host: str, path: str, raw: HomeserverData, port: int, database: str) -> Workers:
    """The workers setting: a preset's counts, explicit counts over them, combinations checked."""
    given, path = raw.workers, f"{path}.workers"
    preset = {"none": {}, "federation": FEDERATION_PRESET, "full": FULL_PRESET}[given.preset]
    counts = {key: preset.get(key, 0) for key in FULL_PRESET}
    for key, value in _given_counts(given).items():
        if value is None:
            continue
        if given.preset == "none" and value:
            _fail(host, f"{path}.{key}", "needs preset: federation or full (with preset: none the homeserver runs "
                  "as one process)")
        most = 1 if key == "background_workers" or key.removeprefix("stream_writers.") in SINGLE_WRITER_STREAMS \
            else MAX_WORKERS
        if value > most:
            why = " (Synapse runs this on one instance only)" if most == 1 else ""
            _fail(host, f"{path}.{key}", f"at most {most}, got {value}{why}")
        counts[key] = value
    if given.preset == "none":
        for key in ("first_port", "metrics_first_port"):
            if getattr(given, key) is not None:
                _fail(host, f"{path}.{key}", "needs preset: federation or full (no worker listens with preset: none)")
        return Workers()
    if not any(counts.values()):
        _fail(host, f"{path}.preset", f"{given.preset} with every count 0 runs no worker: use preset: none")
    if database != "postgres":
        _fail(host, f"{path}.preset", f"workers share the homeserver's database, which SQLite cannot do: "
              f"use database: postgres (this host's database is {database})")
    first_port = given.first_port if given.first_port is not None else default_first_port(port)
    workers = Workers(given.preset, first_port=first_port,
                      stream_writers=tuple((stream, counts[f"stream_writers.{stream}"]) for stream in STREAMS
                                           if counts[f"stream_writers.{stream}"]),
                      **{key: value for key, value in counts.items() if "." not in key})
    listeners = len(workers.ports)
    if listeners and not 1024 <= first_port <= 65535 - listeners + 1:
        _fail(host, f"{path}.first_port", f"its {listeners} listeners must fit in 1024-65535, got {first_port}")
    return workers


def default_first_port(port: int) -> int:
    """The workers' first listener when none is set: 9008 for the homeserver on 8008, 9108 for 8009, ...
    so two homeservers with workers on one host never share ports (port + 1000 outside 8008-8057)."""
    block = port - FIRST_SYNAPSE_PORT
    if 0 <= block < 50:
        return FIRST_SYNAPSE_PORT + WORKER_PORT_OFFSET + block * WORKER_PORT_BLOCK
    return port + WORKER_PORT_OFFSET


def _worker_ports(host: str, homeservers: list[Homeserver], ssh_port: int):
    """Every listener on the host's loopback is one process's: workers' ports collide with nothing."""
    taken = {hs.port: f"homeservers[{i}].port" for i, hs in enumerate(homeservers)}
    taken.update({hs.metrics.port: f"homeservers[{i}].metrics.port" for i, hs in enumerate(homeservers)
                  if hs.metrics is not None})
    for i, hs in enumerate(homeservers):
        for port in hs.workers.ports:
            if port in RESERVED_PORTS | {ssh_port}:
                _fail(host, f"homeservers[{i}].workers.first_port", f"its listener {port} is used by the proxy or SSH")
            if port in taken:
                _fail(host, f"homeservers[{i}].workers.first_port", f"its listener {port} is already used by "
                      f"{taken[port]}")
            taken[port] = f"homeservers[{i}].workers (of {hs.server_name})"


def _sender_metrics(host: str, raws: list[HomeserverData], homeservers: list[Homeserver],
                    ssh_port: int) -> list[Homeserver]:
    """With metrics on, each federation sender's own metrics listener on 127.0.0.1 (the queue lives in
    the senders): from workers.metrics_first_port, else the first free ports after the homeserver's
    metrics port; off every other listener of the host."""
    taken = {hs.port: f"homeservers[{i}].port" for i, hs in enumerate(homeservers)}
    taken.update({hs.metrics.port: f"homeservers[{i}].metrics.port" for i, hs in enumerate(homeservers)
                  if hs.metrics is not None})
    taken.update({port: f"homeservers[{i}].workers (of {hs.server_name})" for i, hs in enumerate(homeservers)
                  for port in hs.workers.ports})
    taken.update({port: "the proxy or SSH" for port in RESERVED_PORTS | {ssh_port}})
    ports: dict[int, tuple[int, ...]] = {}
    for i, (raw, hs) in enumerate(zip(raws, homeservers)):  # explicit ports first: the defaults go around them
        first, path = raw.workers.metrics_first_port, f"homeservers[{i}].workers.metrics_first_port"
        if first is None:
            continue
        if hs.metrics is None or not hs.workers.senders:
            _fail(host, path, "needs metrics on (homeservers[N].metrics) and at least one federation sender")
        wanted = tuple(range(first, first + hs.workers.federation_senders))
        if not 1024 <= first <= 65535 - len(wanted) + 1:
            _fail(host, path, f"its {len(wanted)} listeners must fit in 1024-65535, got {first}")
        for port in wanted:
            if port in taken:
                _fail(host, path, f"its listener {port} is already used by {taken[port]}")
            taken[port] = f"homeservers[{i}].workers.metrics_first_port"
        ports[i] = wanted
    for i, hs in enumerate(homeservers):
        if i in ports or hs.metrics is None or not hs.workers.senders:
            continue
        found, candidate = [], hs.metrics.port + 1
        while len(found) < hs.workers.federation_senders:
            if candidate > 65535:
                _fail(host, f"homeservers[{i}].workers.metrics_first_port", "no free port after the metrics port: "
                      "set it")
            if candidate not in taken:
                found.append(candidate)
                taken[candidate] = f"homeservers[{i}].workers (metrics of {hs.server_name})"
            candidate += 1
        ports[i] = tuple(found)
    return [replace(hs, workers=replace(hs.workers, metrics_ports=ports[i])) if i in ports else hs
            for i, hs in enumerate(homeservers)]


def _homeserver(host: str, path: str, raw: HomeserverData, port: int) -> Homeserver:
    public_host = raw.public_host or raw.server_name.split(":")[0]
    if raw.discovery == "delegated" and public_host == raw.server_name.split(":")[0]:
        _fail(host, f"{path}.discovery", "'delegated' needs a public_host other than the server name "
              "(the delegation host publishes the well-known that points there)")
    whitelist = raw.federation_whitelist
    if whitelist is None and raw.profile == "internal":
        whitelist = []
    visibility = {key: default if getattr(raw, key) is None else getattr(raw, key)
                  for key, default in VISIBILITY_DEFAULTS[raw.profile].items()}
    for key in raw.synapse_extra:
        if key in MANAGED_SYNAPSE_KEYS:
            _fail(host, f"{path}.synapse_extra.{key}", "is managed by federate; use the homeserver setting "
                  "of that name instead (see README, 'Settings')")
    if raw.federation_allow_addresses and raw.profile != "internal":
        _fail(host, f"{path}.federation_allow_addresses", "applies to internal homeservers only (an external one "
              "answers federation from everywhere)")
    if raw.client_allow_ranges == []:
        _fail(host, f"{path}.client_allow_ranges", "an empty list would lock every client out: leave it out "
              "(everyone) or list the ranges your users connect from")
    seen = set()
    for i, user in enumerate(raw.users):
        if user.localpart in seen:
            _fail(host, f"{path}.users[{i}].localpart", f"user {user.localpart!r} is listed twice")
        seen.add(user.localpart)
    return Homeserver(
        server_name=raw.server_name,
        profile=raw.profile,
        port=port,
        public_host=public_host,
        federation_whitelist=None if whitelist is None else tuple(whitelist),
        visibility=visibility,
        users=tuple(User(u.localpart, u.admin) for u in raw.users),
        synapse_extra=dict(raw.synapse_extra),
        discovery=raw.discovery,
        ip_range_whitelist=tuple(raw.ip_range_whitelist),
        client_allow_ranges=None if raw.client_allow_ranges is None else tuple(raw.client_allow_ranges),
        federation_allow_addresses=tuple(raw.federation_allow_addresses),
        federation_sources=tuple(raw.federation_allow_addresses) if raw.profile == "internal" else None,
    )


def _os_users(host: str, homeservers: list[Homeserver]):
    """Each homeserver gets an OS user of its own, whatever the database."""
    owner: dict[str, str] = {}
    for i, hs in enumerate(homeservers):
        if hs.os_user in owner:
            _fail(host, f"homeservers[{i}].server_name", f"{hs.server_name!r} and {owner[hs.os_user]!r} would share "
                  f"the OS user {hs.os_user!r} ('.' and '-' both become '_'): deploy them on different hosts")
        owner[hs.os_user] = hs.server_name


def _database_names(host: str, homeservers: list[Homeserver]):
    """PostgreSQL names are at most 63 bytes, and one cluster serves every homeserver of a host."""
    owner: dict[str, str] = {}
    for i, hs in enumerate(homeservers):
        name = hs.database_name
        if len(name) > POSTGRES_NAME_LIMIT:
            _fail(host, f"homeservers[{i}].server_name", f"its PostgreSQL database name {name!r} has "
                  f"{len(name)} characters, more than PostgreSQL's {POSTGRES_NAME_LIMIT}: use a shorter "
                  "server name, or database: sqlite")
        if name in owner:
            _fail(host, f"homeservers[{i}].server_name", f"{hs.server_name!r} and {owner[name]!r} would share "
                  f"the PostgreSQL database {name!r} ('.' and '-' both become '_'): deploy them on different hosts")
        owner[name] = hs.server_name


def _ports(host: str, raws: list[HomeserverData], ssh_port: int) -> list[int]:
    """Each homeserver's local listener port: given ones checked, missing ones assigned."""
    taken: dict[int, int] = {}
    for i, raw in enumerate(raws):
        if raw.port is not None:
            if not 1024 <= raw.port <= 65535:
                _fail(host, f"homeservers[{i}].port", f"must be 1024-65535, got {raw.port}")
            if raw.port in RESERVED_PORTS | {ssh_port}:
                _fail(host, f"homeservers[{i}].port", f"{raw.port} is used by the proxy or SSH")
            if raw.port in taken:
                _fail(host, f"homeservers[{i}].port",
                      f"{raw.port} is already used by homeservers[{taken[raw.port]}]")
            taken[raw.port] = i
    ports, candidate = [], FIRST_SYNAPSE_PORT
    for i, raw in enumerate(raws):
        if raw.port is not None:
            ports.append(raw.port)
            continue
        while candidate in taken or candidate in RESERVED_PORTS | {ssh_port}:
            candidate += 1
        taken[candidate] = i
        ports.append(candidate)
    return ports


def _metrics(host: str, raws: list[HomeserverData], ports: list[int], ssh_port: int) -> list[Metrics | None]:
    """Each homeserver's metrics listener (None when off): its port off every other port of the host
    (Synapse listeners, other metrics listeners, the proxy, SSH), its address not on the internet."""
    taken = {port: f"homeservers[{i}].port" for i, port in enumerate(ports)}
    for i, raw in enumerate(raws):
        if raw.metrics is not None and raw.metrics.port is not None:
            path = f"homeservers[{i}].metrics.port"
            if not 1024 <= raw.metrics.port <= 65535:
                _fail(host, path, f"must be 1024-65535, got {raw.metrics.port}")
            if raw.metrics.port in RESERVED_PORTS | {ssh_port}:
                _fail(host, path, f"{raw.metrics.port} is used by the proxy or SSH")
            if raw.metrics.port in taken:
                _fail(host, path, f"{raw.metrics.port} is already used by {taken[raw.metrics.port]}")
            taken[raw.metrics.port] = path
    found, candidate = [], FIRST_METRICS_PORT
    for i, raw in enumerate(raws):
        if raw.metrics is None:
            found.append(None)
            continue
        port = raw.metrics.port
        if port is None:
            while candidate in taken or candidate in RESERVED_PORTS | {ssh_port}:
                candidate += 1
            port = candidate
            taken[port] = f"homeservers[{i}].metrics.port"
        found.append(Metrics(raw.metrics.bind, port, _scrapers(host, f"homeservers[{i}].metrics", raw.metrics)))
    return found


def _scrapers(host: str, path: str, raw: MetricsData) -> tuple[str, ...]:
    """The scrapers the firewall lets in: none on loopback, at least one on a private address."""
    bind = ipaddress.ip_address(raw.bind)
    if bind.is_loopback:
        if raw.scrapers:
            _fail(host, f"{path}.scrapers", f"a listener on {raw.bind} (loopback) cannot be scraped from elsewhere: "
                  "bind it to a private address of the host, or leave scrapers out (Prometheus on the host itself)")
        return ()
    if bind.is_unspecified or bind.is_link_local or bind.is_multicast or not (
            bind.is_private or bind in SHARED_ADDRESS_SPACE):
        _fail(host, f"{path}.bind", f"{raw.bind} is not a private address: the metrics listener is never put on "
              "the internet (bind it to loopback, or to the host's address on a private network or VPN)")
    if not raw.scrapers:
        _fail(host, f"{path}.scrapers", f"is required with bind {raw.bind}: the addresses of the Prometheus "
              "servers the firewall lets reach the metrics port (nobody else can)")
    scrapers = []
    for j, scraper in enumerate(raw.scrapers):
        network = ipaddress.ip_network(scraper, strict=False)
        if network.prefixlen == 0 or network.version != bind.version:
            _fail(host, f"{path}.scrapers[{j}]", f"{scraper!r} must be an IPv{bind.version} address or range "
                  f"(like the bind address) narrower than every address")
        scrapers.append(str(network.network_address) if network.prefixlen == network.max_prefixlen else str(network))
    return tuple(dict.fromkeys(scrapers))


def certificate_names(homeservers: Iterable[Homeserver], delegations: Iterable[Delegation]
                      ) -> dict[str, tuple[str, ...]]:
    """Certificate name -> the DNS names it covers, for every site a host serves."""
    return {**{hs.cert_name: hs.proxy_names for hs in homeservers},
            **{d.server_name: (d.server_name,) for d in delegations}}


def _tls(host: str, raw: TlsData, wanted: Mapping[str, tuple[str, ...]], base_dir: Path) -> Tls:
    """`wanted`: certificate name -> the DNS names that certificate must cover; relative file
    paths are relative to `base_dir` (the inventory's folder)."""
    if raw.mode == "acme" and not raw.acme_directory.startswith("https://"):
        _fail(host, "tls.acme_directory", f"must be an https:// URL, got {raw.acme_directory!r}")
    certificates: dict[str, dict[str, str]] = {}
    if raw.mode == "provided":
        for name, names in wanted.items():
            files = raw.certificates.get(name)
            if files is None:
                _fail(host, f"tls.certificates.{name}", f"needs 'cert' and 'key' file paths (a certificate "
                      f"for {', '.join(names)})")
            certificates[name] = _provided_files(host, f"tls.certificates.{name}", files.model_dump(), names,
                                                 base_dir)
    return Tls(raw.mode, raw.acme_directory, raw.email, certificates)


def _provided_files(host: str, path: str, files: dict[str, str], names: tuple[str, ...],
                    base_dir: Path) -> dict[str, str]:
    """Absolute paths of a readable certificate chain and its unencrypted key, covering `names`.

    Checked on the controller, so a wrong file fails here and not as a proxy that will not start.
    Messages never quote the key file's content.
    """
    content = {}
    for kind in ("cert", "key"):
        absolute = (base_dir / Path(files[kind]).expanduser()).absolute()
        try:
            content[kind] = absolute.read_bytes()
        except OSError as error:
            _fail(host, f"{path}.{kind}", f"cannot read {absolute}: {error.strerror}")
        files = {**files, kind: str(absolute)}
    try:
        leaf = x509.load_pem_x509_certificates(content["cert"])[0]
    except ValueError:
        _fail(host, f"{path}.cert", f"{files['cert']} holds no PEM certificate")
    try:
        key = serialization.load_pem_private_key(content["key"], password=None)
    except (ValueError, TypeError):
        _fail(host, f"{path}.key", f"{files['key']} holds no unencrypted PEM private key")
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        _fail(host, f"{path}.key", f"{files['key']} is not the key of the certificate {files['cert']}")
    if leaf.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc):
        _fail(host, f"{path}.cert", f"{files['cert']} expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    missing = [name for name in names if not _certificate_covers(leaf, name)]
    if missing:
        _fail(host, f"{path}.cert", f"{files['cert']} is not valid for {', '.join(missing)} "
                                    f"(the names this host serves with it: {', '.join(names)})")
    return files


def _public_der(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _certificate_covers(cert: x509.Certificate, name: str) -> bool:
    """Whether a subjectAltName DNS entry matches `name` (a wildcard stands for one label)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    for pattern in sans.get_values_for_type(x509.DNSName):
        pattern = pattern.lower()
        if pattern == name or (pattern.startswith("*.") and name.split(".", 1)[-1] == pattern[2:]
                               and "." in name):
            return True
    return False


def _ssh_port(host: str, data: Mapping[str, Any]) -> int:
    port = data.get("ssh_port", 22)
    if not isinstance(port, int) or isinstance(port, bool):
        _fail(host, "ssh_port", f"must be a port number, got {port!r}")
    return port


def _ssh_near_misses(host: str, data: Mapping[str, Any]):
    """`ssh_rate_limit` and the like look like pyinfra's keys, which are not checked: name the right one."""
    for key in data:
        if str(key).startswith("ssh_") and key[len("ssh_"):] in SshData.model_fields:
            _fail(host, key, f"is not a pyinfra key and would be ignored: did you mean "
                  f"ssh: {{'{key[len('ssh_'):]}': ...}}?")


def host_settings(host: str, data: Mapping[str, Any], base_dir: str | Path = ".") -> HostSettings:
    """Validate one host's data (inventory + group_data merged) into HostSettings. The library's
    defaults fill what the data leaves out; relative controller paths (secrets_dir, provided
    certificates) are relative to `base_dir`, the inventory file's folder."""
    base_dir = Path(base_dir)
    ssh_port = _ssh_port(host, data)
    _ssh_near_misses(host, data)
    if "ip_range_whitelist" in data:
        _fail(host, "ip_range_whitelist", "is set per homeserver now (homeservers[N].ip_range_whitelist), so an "
              "openly federating homeserver is not let into the private ranges its internal neighbour needs: "
              "move it to the homeservers that need it")
    try:
        raw = HostData.model_validate(ours(data))
    except ValidationError as error:
        _fail(host, *first_problem(error))
    if not raw.homeservers and not raw.delegations:
        _fail(host, "homeservers", "needs at least one homeserver (or 'delegations' for a delegation host)")
    ports = _ports(host, raw.homeservers, ssh_port)
    metrics = _metrics(host, raw.homeservers, ports, ssh_port)
    homeservers = [replace(_homeserver(host, f"homeservers[{i}]", hs, ports[i]), metrics=metrics[i],
                           restore=_restore(host, f"homeservers[{i}]", hs, raw.database, raw.synapse_version, base_dir),
                           workers=_workers(host, f"homeservers[{i}]", hs, ports[i], raw.database))
                   for i, hs in enumerate(raw.homeservers)]
    _worker_ports(host, homeservers, ssh_port)
    homeservers = _sender_metrics(host, raw.homeservers, homeservers, ssh_port)
    names = [hs.host_name for hs in homeservers]
    for i, hs in enumerate(homeservers):
        if hs.host_name in names[:i]:
            _fail(host, f"homeservers[{i}].server_name", f"{hs.server_name!r} is listed twice")
    if raw.database == "postgres":
        _database_names(host, homeservers)
    _os_users(host, homeservers)
    delegations = tuple(Delegation(d.server_name, d.public_host or "") for d in raw.delegations)
    return HostSettings(
        host=host,
        homeservers=tuple(homeservers),
        delegations=delegations,
        synapse_version=raw.synapse_version,
        proxy=raw.proxy,
        firewall=raw.firewall,
        database=raw.database,
        tls=_tls(host, raw.tls, certificate_names(homeservers, delegations), base_dir),
        trusted_key_servers=(None if raw.trusted_key_servers is None
                             else tuple(k.model_dump() for k in raw.trusted_key_servers)),
        max_upload_size=raw.max_upload_size,
        ssh_port=ssh_port,
        secrets_dir=str((base_dir / raw.secrets_dir).absolute()),
        verify=Verify(raw.verify.after_deploy, raw.verify.dns_server, raw.verify.ca_file, raw.verify.timeout),
        lock=Lock(raw.lock.lease, raw.lock.wait),
        ssh=Ssh(raw.ssh.rate_limit, tuple(dict.fromkeys(raw.ssh.trusted_ranges))),
    )


def inventory_settings(hosts: Iterable[tuple[str, Mapping[str, Any]]], base_dir: str | Path = ".",
                       resolve=None) -> dict[str, HostSettings]:
    """Validate every host, then what spans hosts (a server name lives on one host only, a
    delegation points at the API host of the inventory's homeserver of that name, an internal
    homeserver's proxy admits the hosts of its partners). `resolve(name)` gives a host's addresses
    (default: the controller's resolver)."""
    hosts = list(hosts)
    settings = {name: host_settings(name, data, base_dir) for name, data in hosts}
    owner: dict[str, str] = {}
    by_name: dict[str, Homeserver] = {}
    for name, hs_settings in settings.items():
        for i, hs in enumerate(hs_settings.homeservers):
            if hs.host_name in owner:
                _fail(name, f"homeservers[{i}].server_name",
                      f"{hs.server_name!r} is also deployed on host {owner[hs.host_name]}")
            owner[hs.host_name], by_name[hs.host_name] = name, hs
    for name, hs_settings in settings.items():
        resolved = tuple(_resolve_delegation(name, i, d, by_name) for i, d in enumerate(hs_settings.delegations))
        settings[name] = replace(hs_settings, delegations=resolved)
    addresses = _host_addresses(dict(hosts), resolve or _resolve)
    for name, hs_settings in settings.items():
        homeservers = tuple(_with_partner_addresses(name, i, hs, owner, addresses)
                            for i, hs in enumerate(hs_settings.homeservers))
        settings[name] = replace(settings[name], homeservers=homeservers)
    return settings


def _resolve(name: str) -> list[str]:
    """The name's addresses; link-local ones (fe80::1%eth0) name no route a partner's traffic comes by."""
    return sorted({info[4][0] for info in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
                   if not ipaddress.ip_address(info[4][0].split("%")[0]).is_link_local})


def _host_addresses(data: Mapping[str, Mapping[str, Any]], resolve):
    """host -> a function giving the addresses the inventory reaches it at (its ssh_hostname or its
    name; an IP address as it is, a name through `resolve`), or raising OSError."""
    def addresses(host: str) -> list[str]:
        target = str(data[host].get("ssh_hostname") or host)
        try:
            return [str(ipaddress.ip_address(target))]
        except ValueError:
            return resolve(target)
    return addresses


def _with_partner_addresses(host: str, i: int, hs: Homeserver, owner: Mapping[str, str], addresses) -> Homeserver:
    """An internal homeserver admits federation from its given addresses and from the hosts of its
    whitelisted partners in the inventory; a partner outside it needs federation_allow_addresses."""
    if hs.federation_sources is None:
        return hs
    sources = list(hs.federation_allow_addresses)
    for partner in hs.federation_whitelist or ():
        partner_host = owner.get(partner.split(":")[0])
        if partner_host is None:
            if not hs.federation_allow_addresses:
                _fail(host, f"homeservers[{i}].federation_allow_addresses", f"is required: the whitelisted "
                      f"{partner!r} is not in this inventory, and the proxy of an internal homeserver answers "
                      "federation only from known addresses (list the partner's outgoing addresses)")
            continue
        try:
            sources += addresses(partner_host)
        except OSError as error:
            _fail(host, f"homeservers[{i}].federation_whitelist", f"the address of host {partner_host} (serving "
                  f"the whitelisted {partner!r}) cannot be resolved ({error}): give the host an ssh_hostname, or "
                  f"list its address in federation_allow_addresses")
    return replace(hs, federation_sources=tuple(dict.fromkeys(sources)))


def _resolve_delegation(host: str, i: int, delegation: Delegation, by_name: dict) -> Delegation:
    hs = by_name.get(delegation.server_name)
    if hs is None:
        if not delegation.public_host:
            _fail(host, f"delegations[{i}].public_host",
                  f"is required: {delegation.server_name!r} is not a homeserver of this inventory")
        return delegation
    if hs.discovery != "delegated":
        _fail(host, f"delegations[{i}].server_name", f"{delegation.server_name!r} publishes its own "
              f"discovery ({hs.discovery}); set its discovery: delegated")
    if delegation.public_host and delegation.public_host != hs.public_host:
        _fail(host, f"delegations[{i}].public_host",
              f"{delegation.public_host!r} differs from the homeserver's public_host {hs.public_host!r}")
    return Delegation(delegation.server_name, hs.public_host)
