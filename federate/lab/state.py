"""Names, addresses and files of one lab, and the record of what it started (for `down`)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_NAME = "demo"
VAR_DIR = Path("/var/lib/federate")
IFNAMSIZ = 15  # Linux interface names are at most 15 characters


def validate_name(name: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,30}", name):
        raise ValueError(f"lab name {name!r}: use 1-31 lowercase letters, digits and '-'")
    return name


def short_hash(text: str, length: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def bridge_name(name: str) -> str:
    """`fl-NAME`, or `fl-` + a prefix and a hash when the name is too long for an interface."""
    plain = f"fl-{name}"
    if len(plain) <= IFNAMSIZ:
        return plain
    return f"fl-{name[:5]}-{short_hash(name)}"[:IFNAMSIZ]


def machine_name(name: str, host: str) -> str:
    """Unique per lab and host: nspawn names the bridge side veth `vb-` + this (hashing if long)."""
    return f"{short_hash(name, 4)}-{host}"[:64]


def candidate_subnets(name: str, count: int = 64):
    """Deterministic /24s inside 10.0.0.0/8 for a name: the first one that is free is used."""
    for attempt in range(count):
        digest = hashlib.sha256(f"{name}/{attempt}".encode()).digest()
        # 10.100.0.0 - 10.227.255.0: away from the low 10.0.x/10.1.x ranges networks like to use
        yield ipaddress.ip_network(f"10.{100 + digest[0] % 128}.{digest[1]}.0/24")


def choose_subnet(name: str, taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    for subnet in candidate_subnets(name):
        if not any(subnet.overlaps(other) for other in taken):
            return subnet
    raise RuntimeError(f"no free /24 found for lab {name!r}")


def host_address(subnet: ipaddress.IPv4Network, index: int) -> str:
    """The bridge has .1; hosts get .11, .12, ... in topology order."""
    return str(subnet.network_address + 11 + index)


def bridge_address(subnet: ipaddress.IPv4Network) -> str:
    return str(subnet.network_address + 1)


@dataclass(frozen=True)
class LabPaths:
    name: str
    root: Path

    @property
    def state_dir(self) -> Path:
        suffix = "" if self.name == DEFAULT_NAME else f"-{self.name}"
        return (self.root / f".lab{suffix}").resolve()

    @property
    def var_dir(self) -> Path:
        """Overlay layers live outside the repo (an overlay upper dir cannot sit on every fs)."""
        return VAR_DIR / self.name

    def file(self, name: str) -> Path:
        return self.state_dir / name

    def host_dir(self, host: str) -> Path:
        return self.var_dir / host

    @property
    def state_file(self) -> Path:
        return self.file("state.json")


class State:
    """`state.json`: written after every step of `up`, so `down` can undo a partial one."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key, default=None):
        return self.data.get(key, default)

    def set(self, key, value) -> None:
        self.data[key] = value
        self.save()

    def record_process(self, key: str, pid: int, exe: str) -> None:
        self.data.setdefault("processes", {})[key] = {"pid": pid, "exe": exe}
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)
