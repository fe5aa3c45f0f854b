"""Debian packages every component needs, installed in one apt transaction."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt

from federate.ops import config_file, dpkg_consistent
from federate.settings import HostSettings

# Wait for another apt or dpkg (an unattended upgrade, an interrupted run) instead of failing.
APT_LOCK_TIMEOUT = 'DPkg::Lock::Timeout "300";\n'


def wanted_packages(settings: HostSettings) -> list[str]:
    wanted = ["curl", settings.proxy, settings.firewall]
    if settings.homeservers:
        wanted.append("python3-venv")
    if settings.tls.mode == "acme" and settings.proxy == "nginx":
        wanted.append("certbot")  # caddy has its own ACME client
    if settings.database == "postgres":
        wanted.append("postgresql")
    return wanted


@deploy("System packages")
def packages(settings: HostSettings):
    config_file(name="apt waits for the dpkg lock", dest="/etc/apt/apt.conf.d/50federate-lock-timeout",
                content=APT_LOCK_TIMEOUT)
    dpkg_consistent(name="Finish an interrupted dpkg run")
    wanted = wanted_packages(settings)
    installed = host.get_fact(DebPackages) or {}
    # Refresh the package lists only when something is missing: a converged host changes nothing.
    if any(name not in installed for name in wanted):
        apt.update(name="Refresh package lists")
    apt.packages(name="Install " + ", ".join(wanted), packages=wanted)
