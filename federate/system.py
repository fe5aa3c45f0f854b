"""Debian packages every component needs, installed in one apt transaction."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt

from federate.settings import HostSettings


def wanted_packages(settings: HostSettings) -> list[str]:
    wanted = ["python3-venv", "curl", settings.proxy, settings.firewall]
    if settings.tls.mode == "acme":
        wanted.append("certbot")
    return wanted


@deploy("System packages")
def packages(settings: HostSettings):
    wanted = wanted_packages(settings)
    installed = host.get_fact(DebPackages) or {}
    # Refresh the package lists only when something is missing: a converged host changes nothing.
    if any(name not in installed for name in wanted):
        apt.update(name="Refresh package lists")
    apt.packages(name="Install " + ", ".join(wanted), packages=wanted)
