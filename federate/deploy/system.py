"""Debian packages: each component declares its own; all are installed in one apt transaction."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt

from federate.deploy import database, redis, synapse
from federate.deploy.firewall import firewall_for
from federate.deploy.proxy import Proxy
from federate.pyinfra_ext import declared
from federate.pyinfra_ext.apt import dpkg_consistent
from federate.pyinfra_ext.files import config_file
from federate.settings import HostSettings

BASE_PACKAGES = ("curl",)
# Wait for another apt or dpkg (an unattended upgrade, an interrupted run) instead of failing.
APT_LOCK_TIMEOUT = 'DPkg::Lock::Timeout "300";\n'


def wanted_packages(settings: HostSettings, proxy: Proxy) -> list[str]:
    wanted = [*BASE_PACKAGES, *proxy.packages, *proxy.certificates.packages,
              *firewall_for(settings).packages]
    if settings.homeservers:
        wanted += [*database.packages(settings), *synapse.PACKAGES, *redis.packages(settings)]
    return list(dict.fromkeys(wanted))


@deploy("System packages")
def lists_and_first(settings: HostSettings, proxy: Proxy, first: tuple[str, ...] = ()):
    """apt's settings, the package lists refreshed when a package is missing, and `first` (what the
    work started beside the other packages needs: python3-venv) installed on its own."""
    config_file(name="apt waits for the dpkg lock", dest="/etc/apt/apt.conf.d/50federate-lock-timeout",
                content=APT_LOCK_TIMEOUT)
    dpkg_consistent(name="Finish an interrupted dpkg run")
    installed = host.get_fact(DebPackages) or {}
    # Refresh the package lists only when something is missing: a converged host changes nothing.
    if any(name not in installed for name in wanted_packages(settings, proxy)):
        apt.update(name="Refresh package lists")
    if any(name not in installed for name in first):
        declared.packages(name="Install " + ", ".join(first) + " first", packages=list(first))


@deploy("System packages")
def packages(settings: HostSettings, proxy: Proxy):
    """Every package the components declare, in one apt transaction (after lists_and_first)."""
    if redis.wanted(settings):  # before its package would start Debian's own instance on a TCP port
        redis.mask_debian_instance()
    wanted = wanted_packages(settings, proxy)
    declared.packages(name="Install " + ", ".join(wanted), packages=wanted)
