"""The lab's topology (hosts and their homeservers) and the files rendered from it.

Homeserver entries are passed unchanged into the inventory (the deploy validates them); the lab
reads only server_name, public_host, profile and federation_whitelist.
"""

from __future__ import annotations

import copy
import json
import pprint
from pathlib import Path

from .rootfs import DEFAULT_RELEASE, check_release
from .services import ACME_NAME, ACME_PORT

DEFAULT_TOPOLOGY = {
    "hosts": {
        "hs1": {"homeservers": [
            {"server_name": "alpha.test", "public_host": "matrix.alpha.test", "profile": "external",
             "users": [{"localpart": "alice", "admin": True}]},
            {"server_name": "internal.alpha.test", "profile": "internal",
             "federation_whitelist": ["alpha.test"], "users": [{"localpart": "carol"}]},
        ]},
        # a mixed lab: federation is proven across Debian 12 and Debian 13 hosts, and between a
        # homeserver with workers (beta.test: a federation sender, two federation readers) and ones without
        "hs2": {"release": "trixie",
                "homeservers": [{"server_name": "beta.test", "profile": "external",
                                 "users": [{"localpart": "bob"}], "workers": {"preset": "federation"}}]},
    },
}

ACME_EMAIL = "admin@lab.test"
# The lab CA bundle (lab CA + pebble's roots) lives in the lab's state dir, beside its SSH key.
CA_BUNDLE = "ca_bundle.pem"


def load_topology(source: str | Path | dict | None, release: str | None = None) -> dict:
    """The topology with every host's Debian release filled in: its own `release`, else `release`
    (the `federate lab up --release` option), else the default."""
    if source is None:
        topology = copy.deepcopy(DEFAULT_TOPOLOGY)
    elif isinstance(source, dict):
        topology = copy.deepcopy(source)
    else:
        topology = json.loads(Path(source).read_text())
    if not isinstance(topology.get("hosts"), dict) or not topology["hosts"]:
        raise ValueError("topology: 'hosts' must map host names to {'homeservers': [...]}")
    for host, spec in topology["hosts"].items():
        if not host.replace("-", "").isalnum() or not host[0].isalpha() or len(host) > 20:
            raise ValueError(f"topology: host name {host!r} must be short letters, digits and '-'")
        try:
            spec["release"] = check_release(spec.get("release") or release or DEFAULT_RELEASE)
        except ValueError as error:
            raise ValueError(f"topology: hosts.{host}.{error}") from None
    return topology


def releases(topology: dict) -> list[str]:
    """The Debian releases the topology's hosts run, each once."""
    return sorted({spec["release"] for spec in topology["hosts"].values()})


def bare_name(server_name: str) -> str:
    """`example.test:8448` -> `example.test` (DNS knows no ports)."""
    return server_name.rsplit(":", 1)[0] if ":" in server_name else server_name


def homeserver_summary(host: str, hs: dict) -> dict:
    profile = hs.get("profile", "external")
    whitelist = hs.get("federation_whitelist", [] if profile == "internal" else None)
    name = bare_name(hs["server_name"])
    return {"server_name": hs["server_name"], "public_host": hs.get("public_host", name),
            "host": host, "profile": profile, "federation_whitelist": whitelist}


def homeserver_summaries(topology: dict) -> list[dict]:
    return [homeserver_summary(host, hs) for host, spec in topology["hosts"].items()
            for hs in spec.get("homeservers", [])]


def host_addresses(topology: dict, address_of) -> dict[str, str]:
    return {host: address_of(index) for index, host in enumerate(topology["hosts"])}


def dns_records(topology: dict, addresses: dict[str, str], bridge_ip: str) -> dict[str, str]:
    """Every lab name -> an address: server names, public hosts, extra names, the ACME server."""
    records = {ACME_NAME: bridge_ip}
    for hs in homeserver_summaries(topology):
        records[bare_name(hs["server_name"])] = addresses[hs["host"]]
        records[bare_name(hs["public_host"])] = addresses[hs["host"]]
    for name, target in topology.get("extra_names", {}).items():
        records[name] = addresses.get(target, target)  # a host name of the lab, or an address
    return records


def acme_directory(bridge_ip: str) -> str:
    return f"https://{bridge_ip}:{ACME_PORT}/dir"


def inventory_hosts(topology: dict, addresses: dict[str, str], *, ssh_key: Path, known_hosts: Path,
                    bridge_ip: str, subnet: str, secrets_dir: Path,
                    ca_file: Path | None = None) -> list[tuple[str, dict]]:
    ca_file = Path(ca_file) if ca_file else Path(ssh_key).with_name(CA_BUNDLE)
    hosts = []
    for host, spec in topology["hosts"].items():
        data = {
            "ssh_hostname": addresses[host], "ssh_user": "root", "ssh_key": str(ssh_key),
            "ssh_known_hosts_file": str(known_hosts), "ssh_strict_host_key_checking": "yes",
            # a private federation: every homeserver may reach the lab's subnet
            "homeservers": [{"ip_range_whitelist": [subnet], **hs} for hs in copy.deepcopy(spec.get("homeservers", []))],
            "tls": {"mode": "acme", "acme_directory": acme_directory(bridge_ip), "email": ACME_EMAIL},
            "trusted_key_servers": [],
            "secrets_dir": str(secrets_dir),  # user passwords stay with this lab's state
            # the after-deploy federation check asks the lab DNS and trusts the lab CAs
            "verify": {"dns_server": bridge_ip, "ca_file": str(ca_file.absolute())},
            # the controller (tests, `federate lab status`) opens many SSH connections in a row:
            # exempt from the firewall's SSH rate limit, which still holds for everyone else
            "ssh": {"rate_limit": True, "trusted_ranges": [bridge_ip]},
        }
        data.update(copy.deepcopy(spec.get("host_data", {})))  # optional per-host overrides
        hosts.append((host, data))
    return hosts


def render_inventory(hosts: list[tuple[str, dict]]) -> str:
    body = pprint.pformat(hosts, indent=4, width=100, sort_dicts=False)
    return f"# generated by federate lab: do not edit, `federate lab up` rewrites it\nlab_hosts = {body}\n"
