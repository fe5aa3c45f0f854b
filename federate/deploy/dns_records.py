"""The DNS records each deployment needs, printed by every deploy so users know what to create."""

from __future__ import annotations

import ipaddress

from pyinfra import host, logger
from pyinfra.facts.hardware import Ipv4Addrs, Ipv6Addrs, NetworkDevices

from federate.settings import HostSettings

FEDERATION_PORT = 8448


def records(settings: HostSettings, addresses: list[str]) -> list[str]:
    """Zone-file lines (owner, type, value) this host's homeservers and delegations rely on."""
    lines = []

    def address_records(name: str):
        for address in addresses:
            kind = "AAAA" if ipaddress.ip_address(address).version == 6 else "A"
            lines.append(f"{name}. IN {kind} {address}")

    for hs in settings.homeservers:
        for name in hs.proxy_names:
            address_records(name)
        if hs.discovery == "srv":
            lines.append(f"_matrix-fed._tcp.{hs.host_name}. IN SRV 10 0 {FEDERATION_PORT} {hs.public_host}.")
    for delegation in settings.delegations:
        address_records(delegation.server_name)
    return list(dict.fromkeys(lines))


def public_addresses() -> list[str]:
    """This host's global and private addresses (loopback and link-local are never published)."""
    found = []
    devices = host.get_fact(NetworkDevices)  # one read for both families (the short facts read it twice)
    for fact in (Ipv4Addrs, Ipv6Addrs):
        for values in (fact().process_data(devices) or {}).values():
            for value in values:
                address = ipaddress.ip_address(value)
                if not (address.is_loopback or address.is_link_local):
                    found.append(value)
    return found


def announce(settings: HostSettings):
    for line in records(settings, public_addresses()):
        logger.info(f"[{settings.host}] DNS record needed: {line}")
