"""The shape of a host's data in an inventory: pydantic models, published as JSON Schema.

These models check types, choices and formats (`federate schema` prints them for editors);
federate.settings then checks what spans fields and hosts and resolves the settings the deploy
uses. A validation error becomes one line naming the field, e.g. `homeservers[0].port: ...`.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import types
import typing
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
SYNAPSE_VERSION = "1.163.2"  # pinned; change it in host data to upgrade (the next run upgrades in place)

# Host data that belongs to pyinfra and its connectors, not to us.
FOREIGN_KEY_PREFIXES = ("_", "ssh_", "winrm_", "docker_", "podman_", "chroot_", "local_",
                        "terraform_", "vagrant_")

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"^(?:{_LABEL}\.)+{_LABEL}$")
_LOCALPART = re.compile(r"^[a-z0-9._=/+-]+$")
_SIZE = re.compile(r"^[1-9][0-9]*[KMG]?$")
_VERSION = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")


def server_name_problem(name: Any) -> str | None:
    """Why `name` is not a valid server name (lowercase DNS name, optional :port), or None."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string such as 'example.com'"
    if "://" in name or "/" in name:
        return f"must be a bare name without scheme or path, got {name!r}"
    host_part, _, port = name.partition(":")
    if not _DNS_NAME.match(host_part) or len(host_part) > 253:
        return f"must be a lowercase DNS name with at least one dot, got {name!r}"
    if port and (not port.isdigit() or not 1 <= int(port) <= 65535):
        return f"port must be 1-65535, got {name!r}"
    return None


def _server_name(value: str) -> str:
    if problem := server_name_problem(value):
        raise ValueError(problem)
    return value


def _host_name(value: str) -> str:
    _server_name(value)
    if ":" in value:
        raise ValueError(f"must be a host name without a port, got {value!r}")
    return value


def _matching(pattern: re.Pattern, what: str):
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"must be {what}, got {value!r}")
        return value
    return check


def _cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"must be a CIDR range such as '10.0.0.0/24', got {value!r}") from None
    return value


Cidr = Annotated[str, AfterValidator(_cidr), Field(description="an address or CIDR range such as '10.0.0.0/24'")]


def _ip_and_port(value: str) -> str:
    address = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"must be an IP address (optionally :port), got {value!r}") from None
    return value


def _email(value: str) -> str:
    if "@" not in value:
        raise ValueError(f"must be an e-mail address, got {value!r}")
    return value


ServerName = Annotated[str, AfterValidator(_server_name),
                       Field(description="a server name: lowercase DNS name, optional :port, no scheme")]
HostName = Annotated[str, AfterValidator(_host_name), Field(description="a DNS host name without port")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class UserData(_Section):
    localpart: Annotated[str, AfterValidator(_matching(_LOCALPART, "a lowercase Matrix localpart"))] = Field(
        description="the user ID's local part (@LOCALPART:server_name)")
    admin: bool = Field(False, description="a server admin")


def _ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"must be an IP address such as '127.0.0.1' or '10.0.0.2', got {value!r}") from None


class MetricsData(_Section):
    """Synapse's Prometheus listener (opt-in): loopback by default, or a private address of the host
    with the firewall open to the scrapers only."""
    bind: Annotated[str, AfterValidator(_ip_address)] = Field(
        "127.0.0.1", description="address the metrics listener binds: loopback, or a private address of the host")
    port: Optional[int] = Field(None, description="its port, unique on the host (default: 9000, 9001, ...)")
    scrapers: list[Cidr] = Field([], description="addresses (or CIDR ranges) of the Prometheus servers let in "
                                                 "by the firewall; required with a non-loopback bind")


class StreamWritersData(_Section):
    """Workers that write a stream instead of the main process (Synapse's docs: workers.md, "Stream writers")."""
    typing: Optional[int] = Field(None, ge=0, description="typing notifications (full preset: 1; at most 1)")
    to_device: Optional[int] = Field(None, ge=0, description="to-device messages (full preset: 1; at most 1)")
    account_data: Optional[int] = Field(None, ge=0, description="account data and tags (full preset: 1; at most 1)")
    receipts: Optional[int] = Field(None, ge=0, description="read receipts and markers (full preset: 1)")
    presence: Optional[int] = Field(None, ge=0, description="presence (full preset: 1; at most 1)")


class WorkersData(_Section):
    """Synapse workers with Redis replication (README, "Workers")."""
    preset: Literal["none", "federation", "full"] = Field(
        "none", description="none: one process; federation: a federation sender and generic workers for inbound "
                            "federation; full: also client readers, media, pushers, background tasks, stream writers")
    federation_senders: Optional[int] = Field(None, ge=0, description="federation sender workers "
                                              "(federation and full preset: 1; 0 leaves sending to the main process)")
    federation_readers: Optional[int] = Field(None, ge=0, description="generic workers for inbound federation "
                                              "(federation and full preset: 2; 0 leaves it to the main process)")
    client_readers: Optional[int] = Field(None, ge=0, description="generic workers for the client endpoints "
                                          "Synapse's docs list (full preset: 2)")
    media_repositories: Optional[int] = Field(None, ge=0, description="media repository workers; the first runs "
                                              "the media background jobs (full preset: 1)")
    pushers: Optional[int] = Field(None, ge=0, description="workers sending push notifications (full preset: 1)")
    background_workers: Optional[int] = Field(None, ge=0, description="the worker running background tasks "
                                              "(full preset: 1; at most 1)")
    stream_writers: StreamWritersData = Field(StreamWritersData(), description="writers per stream, e.g. "
                                              "{'typing': 1, 'receipts': 2}")
    first_port: Optional[int] = Field(None, description="the listeners of the workers the proxy routes to, on "
                                      "127.0.0.1: this port and the next ones (default: 9008 for the homeserver on 8008, 9108 for 8009, ...: a block of 100 each)")
    metrics_first_port: Optional[int] = Field(None, description="with metrics on, the federation senders' metrics "
                                              "listeners on 127.0.0.1: this port and the next ones (default: the "
                                              "first free ports after the homeserver's metrics port)")


class HomeserverData(_Section):
    server_name: ServerName = Field(description="the name in user IDs (@alice:example.com)")
    public_host: Optional[HostName] = Field(None, description="host serving the APIs when it differs "
                                            "from the server name (default: the server name)")
    profile: Literal["external", "internal"] = Field(
        "external", description="external federates openly; internal is locked down")
    port: Optional[int] = Field(None, description="Synapse's listener on 127.0.0.1, unique per host "
                                "(default: 8008, 8009, ...)")
    discovery: Literal["well-known", "delegated", "srv"] = Field(
        "well-known", description="how other servers find the API host")
    federation_whitelist: Optional[list[ServerName]] = Field(
        None, description="server names it federates with (default: external everyone, internal nobody)")
    users: list[UserData] = Field([], description="accounts created with shared-secret registration")
    synapse_extra: dict[str, Any] = Field({}, description="other homeserver.yaml keys, merged last")
    allow_public_rooms_over_federation: Optional[bool] = Field(None, description="default by profile")
    allow_profile_lookup_over_federation: Optional[bool] = Field(None, description="default by profile")
    allow_device_name_lookup_over_federation: Optional[bool] = Field(None, description="default by profile")
    enable_room_list_search: Optional[bool] = Field(None, description="default by profile")
    user_directory: Optional[dict[str, Any]] = Field(None, description="default by profile")
    require_auth_for_profile_requests: Optional[bool] = Field(None, description="default by profile")
    limit_profile_requests_to_users_who_share_rooms: Optional[bool] = Field(None, description="default by profile")
    ip_range_whitelist: list[Cidr] = Field(
        [], description="private ranges this homeserver's Synapse may contact (it blocks them by default)")
    federation_allow_addresses: list[Cidr] = Field(
        [], description="internal profile: addresses (IP or CIDR) of whitelisted partners outside the inventory; "
                        "the proxy answers federation only to these and to the inventory hosts of its partners")
    client_allow_ranges: Optional[list[Cidr]] = Field(
        None, description="CIDR ranges allowed to reach the client API, e.g. an office network or VPN "
                          "(default: everyone)")
    metrics: Optional[MetricsData] = Field(
        None, description="Synapse's metrics listener, for Prometheus and the pending PDUs/EDUs of "
                          "`federate destinations` (default: off)")
    workers: WorkersData = Field(WorkersData(), description="Synapse workers with Redis replication, e.g. "
                                 "{'preset': 'federation'} (default: none, one process)")
    restore_from: Optional[str] = Field(
        None, min_length=1, description="a backup folder of `federate backup` on the controller: a host where this "
                                        "homeserver has no data yet gets it restored (README, 'Restore and move')")


class DelegationData(_Section):
    server_name: HostName = Field(description="the server name whose well-known files this host publishes")
    public_host: Optional[HostName] = Field(None, description="its API host (filled in from the inventory "
                                            "when the homeserver is in it)")


class CertificateFiles(_Section):
    cert: str = Field(min_length=1, description="full-chain PEM file on the controller")
    key: str = Field(min_length=1, description="its unencrypted PEM private key on the controller")


class TlsData(_Section):
    mode: Literal["acme", "provided"] = Field("acme", description="ACME (HTTP-01 on port 80) or your own files")
    acme_directory: str = Field(LETS_ENCRYPT, description="the ACME directory URL (https://)")
    email: Optional[Annotated[str, AfterValidator(_email)]] = Field(None, description="ACME account e-mail")
    certificates: dict[str, CertificateFiles] = Field(
        {}, description="provided mode: certificate name (a homeserver's first proxied name, or a "
                        "delegation's server name) -> files; relative paths are relative to the inventory")


class VerifyData(_Section):
    after_deploy: bool = Field(True, description="run the federation check at the end of each deploy")
    dns_server: Optional[Annotated[str, AfterValidator(_ip_and_port)]] = Field(
        None, description="DNS server to ask (IP or IP:port; default: the controller's)")
    ca_file: Optional[str] = Field(None, description="PEM file of the CAs to trust (default: the controller's)")
    timeout: float = Field(10.0, description="seconds per connection")


class LockData(_Section):
    lease: int = Field(300, ge=10, description="seconds a run's deploy lock lasts without renewal; longer than "
                       "the slowest single step (a package install)")
    wait: int = Field(0, ge=0, description="seconds to wait for another run's lock before giving up (0: stop "
                      "at once)")


def _ssh_range(value: str) -> str:
    """An address or CIDR range, in the form ufw prints it (a single address without /32 or /128)."""
    try:
        network = ipaddress.ip_network(value)
    except ValueError:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"must be an address or CIDR range such as '192.0.2.0/24', got {value!r}") from None
        raise ValueError(f"has host bits set: did you mean {str(loose)!r}? got {value!r}") from None
    if network.prefixlen == 0:
        raise ValueError(f"{value!r} trusts every address: set ssh.rate_limit: false instead")
    return str(network.network_address) if network.prefixlen == network.max_prefixlen else str(network)


class SshData(_Section):
    """The firewall's limit on new SSH connections (ufw `limit`, an nftables meter)."""
    rate_limit: bool = Field(True, description="refuse new SSH connections from a source address beyond 5 at "
                             "once and then one per 6 seconds; established sessions are never cut")
    trusted_ranges: list[Annotated[str, AfterValidator(_ssh_range)]] = Field(
        [], description="addresses or CIDR ranges exempt from the limit (an admin VPN, a CI runner)")


class KeyServerData(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)  # Synapse's own keys pass through
    server_name: ServerName


class HostData(_Section):
    """A host's data: inventory host data and group_data merged by pyinfra. Keys of pyinfra's
    connectors (ssh_*, _sudo, ...) are pyinfra's and not checked here."""

    model_config = ConfigDict(title="federate host data")

    homeservers: list[HomeserverData] = Field([], description="the homeservers on this host")
    delegations: list[DelegationData] = Field([], description="server names whose well-known files this "
                                              "host publishes (a delegation host)")
    synapse_version: Annotated[str, AfterValidator(_matching(_VERSION, "an exact version such as '1.163.2'"))] \
        = Field(SYNAPSE_VERSION, description="exact matrix-synapse version from PyPI; change it to upgrade")
    proxy: Literal["nginx", "caddy"] = Field("nginx", description="the reverse proxy terminating TLS")
    firewall: Literal["ufw", "nftables"] = Field("ufw", description="the host firewall")
    database: Literal["postgres", "sqlite"] = Field("postgres", description="Synapse's database")
    tls: TlsData = Field(TlsData(), description="where certificates come from")
    max_upload_size: Annotated[str, AfterValidator(_matching(_SIZE, "a size such as '50M'"))] = Field(
        "50M", description="Synapse's upload limit; the proxy accepts bodies of the same size")
    trusted_key_servers: Optional[list[KeyServerData]] = Field(
        None, description="notary servers (default: Synapse's, matrix.org); [] fetches keys from origins")
    secrets_dir: str = Field(".secrets", description="controller folder for generated user passwords, "
                                                     "relative to the inventory file")
    verify: VerifyData = Field(VerifyData(), description="the federation check after each deploy")
    lock: LockData = Field(LockData(), description="one run at a time per host: the deploy lock's lease")
    ssh: SshData = Field(SshData(), description="the firewall's rate limit on new SSH connections")


def defaults() -> dict[str, Any]:
    """The library's defaults for host data (what an inventory with no group_data gets)."""
    return {name: (field.default.model_dump() if isinstance(field.default, BaseModel) else field.default)
            for name, field in HostData.model_fields.items() if name not in ("homeservers", "delegations")}


def ours(data: typing.Mapping[str, Any]) -> dict[str, Any]:
    """Host data without pyinfra's connector keys."""
    return {k: v for k, v in data.items() if not str(k).startswith(FOREIGN_KEY_PREFIXES)}


def schema() -> dict:
    """JSON Schema of host data; pyinfra's connector keys are allowed beside ours."""
    document = HostData.model_json_schema()
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["patternProperties"] = {f"^{re.escape(prefix)}": {} for prefix in FOREIGN_KEY_PREFIXES}
    return document


# ---------------------------------------------------------------- errors as one line

TYPE_WORDS = {"greater_than_equal": "at least {ge}", "int_type": "a whole number", "bool_type": "true or false", "string_type": "a string",
              "float_type": "a number", "list_type": "a list", "dict_type": "a mapping",
              "model_type": "a mapping", "model_attributes_type": "a mapping", "string_too_short": "not empty"}


# What a field holds, for messages about a value of the wrong type.
EXPECTED = {"homeservers": "a list of homeserver mappings", "delegations": "a list of {server_name, public_host} "
            "entries", "users": "a list of {localpart, admin} entries", "federation_whitelist": "a list of server "
            "names", "ip_range_whitelist": "a list of CIDR ranges", "federation_allow_addresses": "a list of addresses or CIDR "
            "ranges", "client_allow_ranges": "a list of CIDR ranges", "trusted_key_servers": "a list of "
            "{server_name, verify_keys} entries", "synapse_extra": "a mapping of extra homeserver.yaml keys",
            "tls": "a mapping with 'mode'", "verify": "a mapping such as {'after_deploy': true}",
            "certificates": "a mapping of certificate name -> {cert, key}", "port": "a port number",
            "ssh": "a mapping with 'rate_limit' and 'trusted_ranges'",
            "trusted_ranges": "a list of addresses or CIDR ranges",
            "metrics": "a mapping such as {'bind': '127.0.0.1'} ({} for the defaults)",
            "scrapers": "a list of addresses or CIDR ranges",
            "workers": "a mapping such as {'preset': 'federation'}"}


def field_path(loc: tuple) -> str:
    """('homeservers', 0, 'users', 1, 'localpart') -> 'homeservers[0].users[1].localpart'."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def first_problem(error: ValidationError) -> tuple[str, str]:
    """(field path, problem) of the first error pydantic found."""
    entry = error.errors()[0]
    loc, kind, given = tuple(entry["loc"]), entry["type"], entry.get("input")
    parent, field = _walk(loc)
    if kind == "extra_forbidden":
        known = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return field_path(loc), f"unknown key{hint}; known keys: {', '.join(known)}"
    if kind == "missing":
        return field_path(loc), "is required"
    if kind == "value_error":
        return field_path(loc), str(entry["ctx"]["error"])
    if kind == "literal_error" and field is not None:
        choices = [a for a in typing.get_args(_strip_optional(field.annotation)) if a is not None]
        return field_path(loc), f"must be one of {', '.join(choices)}, got {given!r}"
    named = loc and isinstance(loc[-1], str) and kind in TYPE_WORDS
    if named and loc[-1] in EXPECTED:
        what = EXPECTED[loc[-1]]  # literal text: its braces are examples, not placeholders
    else:
        what = TYPE_WORDS.get(kind, entry["msg"]).format(**entry.get("ctx", {}))
    return field_path(loc), f"must be {what}, got {given!r}"


def _strip_optional(annotation):
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _walk(loc: tuple):
    """The model holding the field at `loc`, and that field's FieldInfo (None for an unknown key)."""
    annotation, parent, field = HostData, None, None
    for part in loc:
        annotation = _strip_optional(annotation)
        while typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
        if typing.get_origin(annotation) in (list, dict):
            annotation = typing.get_args(annotation)[-1]  # an index or a mapping's key
            continue
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return parent, field
        parent, field = annotation, annotation.model_fields.get(part)
        if field is None:
            return parent, None
        annotation = field.annotation
    return parent, field
