"""The Debian releases the deploy supports; any other system is refused before a change.

What differs between the releases is written here and nowhere else: the PostgreSQL major version
a fresh host gets (an upgraded host keeps the cluster it has, see database.py), how nginx is
told to speak HTTP/2 and the Python whose lock Synapse's venv is installed from (locks/).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Release:
    major: int
    codename: str
    postgresql: str  # the major version Debian's `postgresql` package installs
    nginx_http2_on: bool  # nginx >= 1.25.1: `http2 on;` replaces the deprecated `listen ... http2`
    python: str  # Debian's python3 (major.minor): Synapse's venv runs on it, its lock is made for it


RELEASES = {
    12: Release(12, "bookworm", postgresql="15", nginx_http2_on=False, python="3.11"),  # nginx 1.22
    13: Release(13, "trixie", postgresql="17", nginx_http2_on=True, python="3.13"),  # nginx 1.26
}
BOOKWORM, TRIXIE = RELEASES[12], RELEASES[13]


def described(distribution: dict) -> str:
    """How /etc/os-release names the system, for messages."""
    meta = distribution.get("release_meta") or {}
    if meta.get("PRETTY_NAME"):
        return meta["PRETTY_NAME"]
    name = distribution.get("name") or "an unknown system (no /etc/os-release)"
    return f"{name} {distribution.get('major') or ''}".strip()


def release_of(distribution: dict) -> Release | None:
    if distribution.get("name") != "Debian":
        return None
    return RELEASES.get(distribution.get("major"))


def unsupported_problem(host_name: str, distribution: dict) -> str | None:
    """Why this host cannot be deployed to, or None for Debian 12 and 13."""
    if release_of(distribution) is not None:
        return None
    supported = " and ".join(f"Debian {r.major} ({r.codename})" for r in RELEASES.values())
    return (f"host {host_name}: /etc/os-release says {described(distribution)}; "
            f"federate deploys to {supported} only")
