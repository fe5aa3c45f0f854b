"""The one settings model: inventory host data -> validated, immutable settings.

Every value a deploy uses comes from here. Validation happens for *all* hosts of the
inventory before any operation is planned, and every error names the host and the field.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization

PROFILES = ("external", "internal")
PROXIES = ("nginx", "caddy")
FIREWALLS = ("ufw", "nftables")
DATABASES = ("postgres", "sqlite")
TLS_MODES = ("acme", "provided")
# How other servers find a homeserver's API host: its own /.well-known/matrix/server, the
# well-known published by another host (a delegation host), or a _matrix-fed._tcp SRV record.
DISCOVERIES = ("well-known", "delegated", "srv")

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"

# The library's defaults for host data: an inventory with no group_data gets these. Override
# any of them in the inventory's host data or in group_data/*.py (README, "Settings").
DEFAULTS: dict[str, Any] = {
    "synapse_version": "1.163.2",  # pinned; change it to upgrade (the next run upgrades in place)
    "proxy": "nginx",
    "firewall": "ufw",
    "database": "postgres",
    "tls": {"mode": "acme", "acme_directory": LETS_ENCRYPT},
    "max_upload_size": "50M",
    "secrets_dir": ".secrets",  # relative to the inventory file's folder
}

# Ports the proxy and SSH own on every host; Synapse listeners must stay off them.
RESERVED_PORTS = {22, 80, 443, 8448}
FIRST_SYNAPSE_PORT = 8008
POSTGRES_NAME_LIMIT = 63  # bytes in an identifier (NAMEDATALEN - 1)

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"^(?:{_LABEL}\.)+{_LABEL}$")
_LOCALPART = re.compile(r"^[a-z0-9._=/+-]+$")
_SIZE = re.compile(r"^[1-9][0-9]*[KMG]?$")

# Visibility settings an internal profile locks down; each can be overridden per homeserver.
VISIBILITY_DEFAULTS: dict[str, dict[str, Any]] = {
    "external": {
        "allow_public_rooms_over_federation": False,
        "allow_profile_lookup_over_federation": True,
        "allow_device_name_lookup_over_federation": False,
        "enable_room_list_search": True,
        "user_directory": {"enabled": True, "search_all_users": False},
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
    },
}

# Synapse keys the deploy manages itself: the escape hatch may not set them, because
# doing so would silently break the listener, paths, secrets or federation policy.
MANAGED_SYNAPSE_KEYS = frozenset({
    "server_name", "public_baseurl", "serve_server_wellknown", "listeners", "database",
    "pid_file", "log_config", "media_store_path", "signing_key_path", "report_stats",
    "registration_shared_secret", "registration_shared_secret_path", "macaroon_secret_key",
    "form_secret", "federation_domain_whitelist", "ip_range_whitelist",
    "trusted_key_servers", "enable_registration", "max_upload_size",
    *VISIBILITY_DEFAULTS["external"],
})

HOST_KEYS = frozenset({
    "homeservers", "synapse_version", "proxy", "firewall", "database", "tls",
    "ip_range_whitelist", "trusted_key_servers", "max_upload_size", "secrets_dir", "verify",
    "delegations",
})
HOMESERVER_KEYS = frozenset({
    "server_name", "profile", "port", "public_host", "federation_whitelist", "users",
    "synapse_extra", "discovery", *VISIBILITY_DEFAULTS["external"],
})
DELEGATION_KEYS = frozenset({"server_name", "public_host"})
TLS_KEYS = frozenset({"mode", "acme_directory", "email", "certificates"})
VERIFY_KEYS = frozenset({"after_deploy", "dns_server", "ca_file", "timeout"})
USER_KEYS = frozenset({"localpart", "admin"})
# Host data that belongs to pyinfra and its connectors, not to us.
FOREIGN_KEY_PREFIXES = ("_", "ssh_", "winrm_", "docker_", "podman_", "chroot_", "local_",
                        "terraform_", "vagrant_")


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
        """Its PostgreSQL role and database: synapse_ and the host name with '.' and '-' as '_'.
        Two names can map to one (a-b.test, a.b.test): validation refuses that on one host."""
        return "synapse_" + re.sub(r"[^a-z0-9]", "_", self.host_name)


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
class HostSettings:
    host: str
    homeservers: tuple[Homeserver, ...]
    delegations: tuple[Delegation, ...]
    synapse_version: str
    proxy: str
    firewall: str
    database: str
    tls: Tls
    ip_range_whitelist: tuple[str, ...]
    trusted_key_servers: tuple[Mapping[str, Any], ...] | None  # None: Synapse's default
    max_upload_size: str
    ssh_port: int
    secrets_dir: str  # absolute, on the controller: generated user passwords, mode 0600
    verify: Verify


# ---------------------------------------------------------------- small checkers

def _fail(host: str, path: str, problem: str):
    raise SettingsError(host, path, problem)


def _reject_unknown(host: str, path: str, given: Iterable[str], known: frozenset[str]):
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            where = f"{path}.{key}" if path else str(key)
            _fail(host, where, f"unknown key{hint}; known keys: {', '.join(sorted(known))}")


def _expect(host: str, path: str, value: Any, kind: type | tuple, what: str):
    # bool is an int in Python; never accept it where a number or text is expected
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        _fail(host, path, f"must be {what}, got {value!r}")
    return value


def _choice(host: str, path: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        _fail(host, path, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


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


def _server_name(host: str, path: str, value: Any, allow_port: bool = True) -> str:
    problem = server_name_problem(value)
    if problem is None and not allow_port and ":" in value:
        problem = f"must be a host name without a port, got {value!r}"
    if problem:
        _fail(host, path, problem)
    return value


# ---------------------------------------------------------------- sections

def _users(host: str, path: str, value: Any) -> tuple[User, ...]:
    _expect(host, path, value, list, "a list of {localpart, admin} entries")
    users, seen = [], set()
    for i, entry in enumerate(value):
        where = f"{path}[{i}]"
        _expect(host, where, entry, dict, "a mapping with 'localpart'")
        _reject_unknown(host, where, entry, USER_KEYS)
        localpart = entry.get("localpart")
        if not isinstance(localpart, str) or not _LOCALPART.match(localpart):
            _fail(host, f"{where}.localpart", f"must be a lowercase Matrix localpart, got {localpart!r}")
        if localpart in seen:
            _fail(host, f"{where}.localpart", f"user {localpart!r} is listed twice")
        seen.add(localpart)
        admin = _expect(host, f"{where}.admin", entry.get("admin", False), bool, "true or false")
        users.append(User(localpart, admin))
    return tuple(users)


def _whitelist(host: str, path: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    _expect(host, path, value, list, "a list of server names")
    for i, name in enumerate(value):
        _server_name(host, f"{path}[{i}]", name)
    return tuple(value)


def _synapse_extra(host: str, path: str, value: Any) -> dict[str, Any]:
    _expect(host, path, value, dict, "a mapping of extra homeserver.yaml keys")
    for key in value:
        if key in MANAGED_SYNAPSE_KEYS:
            _fail(host, f"{path}.{key}", "is managed by federate; use the homeserver setting "
                  "of that name instead (see README, 'Settings')")
    return dict(value)


def _homeserver(host: str, path: str, raw: Any, port: int) -> Homeserver:
    _expect(host, path, raw, dict, "a mapping with at least 'server_name'")
    _reject_unknown(host, path, raw, HOMESERVER_KEYS)
    if "server_name" not in raw:
        _fail(host, f"{path}.server_name", "is required")
    server_name = _server_name(host, f"{path}.server_name", raw["server_name"])
    profile = _choice(host, f"{path}.profile", raw.get("profile", "external"), PROFILES)
    public_host = _server_name(host, f"{path}.public_host",
                               raw.get("public_host", server_name.split(":")[0]), allow_port=False)
    discovery = _choice(host, f"{path}.discovery", raw.get("discovery", "well-known"), DISCOVERIES)
    if discovery == "delegated" and public_host == server_name.split(":")[0]:
        _fail(host, f"{path}.discovery", "'delegated' needs a public_host other than the server name "
              "(the delegation host publishes the well-known that points there)")
    whitelist = _whitelist(host, f"{path}.federation_whitelist",
                           raw.get("federation_whitelist", [] if profile == "internal" else None))
    visibility = dict(VISIBILITY_DEFAULTS[profile])
    for key, default in VISIBILITY_DEFAULTS[profile].items():
        if key in raw:
            kind, what = (dict, "a mapping") if isinstance(default, dict) else (bool, "true or false")
            visibility[key] = _expect(host, f"{path}.{key}", raw[key], kind, what)
    return Homeserver(
        server_name=server_name,
        profile=profile,
        port=port,
        public_host=public_host,
        federation_whitelist=whitelist,
        visibility=visibility,
        users=_users(host, f"{path}.users", raw.get("users", [])),
        synapse_extra=_synapse_extra(host, f"{path}.synapse_extra", raw.get("synapse_extra", {})),
        discovery=discovery,
    )


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


def _ports(host: str, raws: list, ssh_port: int) -> list[int]:
    """Each homeserver's local listener port: given ones checked, missing ones assigned."""
    taken: dict[int, int] = {}
    for i, raw in enumerate(raws):
        if isinstance(raw, dict) and "port" in raw:
            port = _expect(host, f"homeservers[{i}].port", raw["port"], int, "a port number")
            if not 1024 <= port <= 65535:
                _fail(host, f"homeservers[{i}].port", f"must be 1024-65535, got {port}")
            if port in RESERVED_PORTS | {ssh_port}:
                _fail(host, f"homeservers[{i}].port", f"{port} is used by the proxy or SSH")
            if port in taken:
                _fail(host, f"homeservers[{i}].port",
                      f"{port} is already used by homeservers[{taken[port]}]")
            taken[port] = i
    ports, candidate = [], FIRST_SYNAPSE_PORT
    for i, raw in enumerate(raws):
        if isinstance(raw, dict) and "port" in raw:
            ports.append(raw["port"])
            continue
        while candidate in taken or candidate in RESERVED_PORTS | {ssh_port}:
            candidate += 1
        taken[candidate] = i
        ports.append(candidate)
    return ports


def certificate_names(homeservers: Iterable[Homeserver], delegations: Iterable[Delegation]
                      ) -> dict[str, tuple[str, ...]]:
    """Certificate name -> the DNS names it covers, for every site a host serves."""
    return {**{hs.cert_name: hs.proxy_names for hs in homeservers},
            **{d.server_name: (d.server_name,) for d in delegations}}


def _tls(host: str, raw: Any, wanted: Mapping[str, tuple[str, ...]], base_dir: Path) -> Tls:
    """`wanted`: certificate name -> the DNS names that certificate must cover; relative file
    paths are relative to `base_dir` (the inventory's folder)."""
    _expect(host, "tls", raw, dict, "a mapping with 'mode'")
    _reject_unknown(host, "tls", raw, TLS_KEYS)
    mode = _choice(host, "tls.mode", raw.get("mode", "acme"), TLS_MODES)
    directory = _expect(host, "tls.acme_directory", raw.get("acme_directory", LETS_ENCRYPT), str, "a URL")
    email = raw.get("email")
    if email is not None and (not isinstance(email, str) or "@" not in email):
        _fail(host, "tls.email", f"must be an e-mail address, got {email!r}")
    certificates = raw.get("certificates", {})
    _expect(host, "tls.certificates", certificates, dict, "a mapping of server name -> {cert, key}")
    if mode == "acme" and not directory.startswith("https://"):
        _fail(host, "tls.acme_directory", f"must be an https:// URL, got {directory!r}")
    if mode == "provided":
        certificates = {name: _provided_files(host, f"tls.certificates.{name}", certificates.get(name), names,
                                              base_dir)
                        for name, names in wanted.items()}
    return Tls(mode, directory, email, certificates)


def _provided_files(host: str, path: str, files: Any, names: tuple[str, ...], base_dir: Path) -> dict[str, str]:
    """Absolute paths of a readable certificate chain and its unencrypted key, covering `names`.

    Checked on the controller, so a wrong file fails here and not as a proxy that will not start.
    Messages never quote the key file's content.
    """
    if not isinstance(files, dict) or set(files) != {"cert", "key"}:
        _fail(host, path, f"needs 'cert' and 'key' file paths (a certificate for {', '.join(names)})")
    content = {}
    for kind in ("cert", "key"):
        if not isinstance(files[kind], str) or not files[kind]:
            _fail(host, f"{path}.{kind}", f"must be a file path on the controller, got {files[kind]!r}")
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


def _verify(host: str, raw: Any) -> Verify:
    _expect(host, "verify", raw, dict, "a mapping such as {'after_deploy': true}")
    _reject_unknown(host, "verify", raw, VERIFY_KEYS)
    dns_server = raw.get("dns_server")
    if dns_server is not None:
        try:
            ipaddress.ip_address(str(dns_server).rsplit(":", 1)[0] if str(dns_server).count(":") == 1
                                 else str(dns_server))
        except ValueError:
            _fail(host, "verify.dns_server", f"must be an IP address (optionally :port), got {dns_server!r}")
    ca_file = raw.get("ca_file")
    if ca_file is not None:
        _expect(host, "verify.ca_file", ca_file, str, "a path to a PEM file on the controller")
    timeout = raw.get("timeout", 10)
    _expect(host, "verify.timeout", timeout, (int, float), "a number of seconds")
    return Verify(_expect(host, "verify.after_deploy", raw.get("after_deploy", True), bool, "true or false"),
                  dns_server, ca_file, float(timeout))


def _delegations(host: str, value: Any) -> tuple[Delegation, ...]:
    """Entries may omit public_host; it is filled in from the inventory's homeserver of that name."""
    _expect(host, "delegations", value, list, "a list of {server_name, public_host} entries")
    entries = []
    for i, raw in enumerate(value):
        where = f"delegations[{i}]"
        _expect(host, where, raw, dict, "a mapping with 'server_name'")
        _reject_unknown(host, where, raw, DELEGATION_KEYS)
        name = _server_name(host, f"{where}.server_name", raw.get("server_name"), allow_port=False)
        public = raw.get("public_host")
        if public is not None:
            _server_name(host, f"{where}.public_host", public, allow_port=False)
        entries.append(Delegation(name, public or ""))
    return tuple(entries)


def _cidrs(host: str, path: str, value: Any) -> tuple[str, ...]:
    _expect(host, path, value, list, "a list of CIDR ranges")
    for i, cidr in enumerate(value):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except (TypeError, ValueError):
            _fail(host, f"{path}[{i}]", f"must be a CIDR range such as '10.0.0.0/24', got {cidr!r}")
    return tuple(value)


def _key_servers(host: str, path: str, value: Any) -> tuple[dict, ...] | None:
    if value is None:
        return None
    _expect(host, path, value, list, "a list of {server_name, verify_keys} entries")
    for i, entry in enumerate(value):
        _expect(host, f"{path}[{i}]", entry, dict, "a mapping with 'server_name'")
        _server_name(host, f"{path}[{i}].server_name", entry.get("server_name"))
    return tuple(value)


def host_settings(host: str, data: Mapping[str, Any], base_dir: str | Path = ".") -> HostSettings:
    """Validate one host's data (inventory + group_data merged) into HostSettings. The library's
    DEFAULTS fill what the data leaves out; relative controller paths (secrets_dir, provided
    certificates) are relative to `base_dir`, the inventory file's folder."""
    data = {**DEFAULTS, **data}
    base_dir = Path(base_dir)
    _reject_unknown(host, "", [k for k in data if not str(k).startswith(FOREIGN_KEY_PREFIXES)],
                    HOST_KEYS)
    ssh_port = data.get("ssh_port", 22)
    _expect(host, "ssh_port", ssh_port, int, "a port number")
    raws = _expect(host, "homeservers", data.get("homeservers", []), list,
                   "a list of homeserver mappings")
    delegations = _delegations(host, data.get("delegations", []))
    if not raws and not delegations:
        _fail(host, "homeservers", "needs at least one homeserver (or 'delegations' for a delegation host)")
    ports = _ports(host, raws, ssh_port)
    homeservers = [_homeserver(host, f"homeservers[{i}]", raw, ports[i]) for i, raw in enumerate(raws)]
    names = [hs.host_name for hs in homeservers]
    for i, hs in enumerate(homeservers):
        if hs.host_name in names[:i]:
            _fail(host, f"homeservers[{i}].server_name", f"{hs.server_name!r} is listed twice")
    database = _choice(host, "database", data.get("database"), DATABASES)
    if database == "postgres":
        _database_names(host, homeservers)
    version = _expect(host, "synapse_version", data.get("synapse_version"), str, "a version string")
    if not re.match(r"^[0-9]+\.[0-9]+\.[0-9]+$", version):
        _fail(host, "synapse_version", f"must be an exact version such as '1.163.2', got {version!r}")
    size = str(data["max_upload_size"])
    if not _SIZE.match(size):
        _fail(host, "max_upload_size", f"must look like '50M', got {size!r}")
    return HostSettings(
        host=host,
        homeservers=tuple(homeservers),
        delegations=delegations,
        synapse_version=version,
        proxy=_choice(host, "proxy", data.get("proxy"), PROXIES),
        firewall=_choice(host, "firewall", data.get("firewall"), FIREWALLS),
        database=database,
        tls=_tls(host, data["tls"], certificate_names(homeservers, delegations), base_dir),
        ip_range_whitelist=_cidrs(host, "ip_range_whitelist", data.get("ip_range_whitelist", [])),
        trusted_key_servers=_key_servers(host, "trusted_key_servers",
                                         data.get("trusted_key_servers")),
        max_upload_size=size,
        ssh_port=ssh_port,
        secrets_dir=str((base_dir / _expect(host, "secrets_dir", data["secrets_dir"], str, "a path")).absolute()),
        verify=_verify(host, data.get("verify", {})),
    )


def inventory_settings(hosts: Iterable[tuple[str, Mapping[str, Any]]], base_dir: str | Path = "."
                       ) -> dict[str, HostSettings]:
    """Validate every host, then what spans hosts (a server name lives on one host only, and a
    delegation points at the API host of the inventory's homeserver of that name)."""
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
    return settings


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
