"""The lab bridge on the controller: the only network change the lab makes outside itself."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          stdin=subprocess.DEVNULL)


def routed_subnets(exclude_device: str | None = None) -> list[ipaddress.IPv4Network]:
    """IPv4 networks the controller already routes or has addresses in (default route ignored)."""
    nets = []
    for route in json.loads(_ip("-j", "-4", "route", "show", "table", "all").stdout or "[]"):
        dst = route.get("dst", "")
        if dst in ("", "default") or route.get("dev") == exclude_device:
            continue
        try:
            nets.append(ipaddress.ip_network(dst if "/" in dst else dst + "/32", strict=False))
        except ValueError:
            continue
    for link in json.loads(_ip("-j", "-4", "addr").stdout or "[]"):
        if link.get("ifname") == exclude_device:
            continue
        for addr in link.get("addr_info", []):
            nets.append(ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    return nets


def bridge_exists(bridge: str) -> bool:
    return _ip("link", "show", "dev", bridge, check=False).returncode == 0


def create_bridge(bridge: str, address: str, prefixlen: int) -> None:
    if not bridge_exists(bridge):
        _ip("link", "add", "name", bridge, "type", "bridge")
    isolate(bridge)
    _ip("addr", "replace", f"{address}/{prefixlen}", "dev", bridge)
    _ip("link", "set", bridge, "up")


def isolate(bridge: str) -> None:
    """Nothing from the lab is routed onward, even if the controller forwards for others
    (a host could add its own default route); no IPv6 on the bridge at all."""
    Path(f"/proc/sys/net/ipv4/conf/{bridge}/forwarding").write_text("0\n")
    ipv6 = Path(f"/proc/sys/net/ipv6/conf/{bridge}/disable_ipv6")
    if ipv6.exists():
        ipv6.write_text("1\n")


def delete_bridge(bridge: str) -> None:
    if bridge_exists(bridge):
        _ip("link", "delete", bridge, "type", "bridge")
