"""Debian packages: each component declares its own; all are installed in one apt transaction."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt, server

from federate.deploy import database, redis, synapse
from federate.deploy.firewall import firewall_for
from federate.deploy.proxy import Proxy, proxies
from federate.pyinfra_ext import declared
from federate.pyinfra_ext.apt import dpkg_consistent
from federate.pyinfra_ext.files import config_file
from federate.settings import HostSettings

BASE_PACKAGES = ("curl",)
# Wait for another apt or dpkg (an unattended upgrade, an interrupted run) instead of failing.
APT_LOCK_TIMEOUT = 'DPkg::Lock::Timeout "300";\n'
# dpkg without an fsync per unpacked file, for the first install only (fresh_host), then one sync.
FAST_FIRST_INSTALL = "-o Dpkg::Options::=--force-unsafe-io"


def fresh_host(installed: dict) -> bool:
    """No proxy package (nginx or caddy) yet: the host serves nothing, so its first install may skip
    dpkg's per-file fsync (as debootstrap and the Debian installer do for a new system). A cut
    run loses nothing by it (written data stays in the page cache; dpkg's own database is still
    synced), and the sync right after the install closes the window: only a power loss or a
    kernel crash during that first install could leave files short, on a host not yet in service."""
    return not any(name in installed for proxy in proxies().values() for name in proxy.packages)


def wanted_packages(settings: HostSettings, proxy: Proxy) -> list[str]:
    wanted = [*BASE_PACKAGES, *proxy.packages, *proxy.certificates.packages,
              *firewall_for(settings).packages]
    if settings.homeservers:
        wanted += [*database.packages(settings), *synapse.PACKAGES, *redis.packages(settings)]
    return list(dict.fromkeys(wanted))


@deploy("System packages")
def packages(settings: HostSettings, proxy: Proxy):
    config_file(name="apt waits for the dpkg lock", dest="/etc/apt/apt.conf.d/50federate-lock-timeout",
                content=APT_LOCK_TIMEOUT)
    dpkg_consistent(name="Finish an interrupted dpkg run")
    wanted = wanted_packages(settings, proxy)
    installed = host.get_fact(DebPackages) or {}
    # Refresh the package lists only when something is missing: a converged host changes nothing.
    if any(name not in installed for name in wanted):
        apt.update(name="Refresh package lists")
    if redis.wanted(settings):  # before its package would start Debian's own instance on a TCP port
        redis.mask_debian_instance()
    fast = fresh_host(installed)
    install = declared.packages(name="Install " + ", ".join(wanted), packages=wanted,
                                extra_install_args=FAST_FIRST_INSTALL if fast else None)
    if fast:
        server.shell(name="The first install written to disk", commands=["sync"], _if=install.did_change)
