"""The deploy: one module per component, each a pyinfra `@deploy` reading validated settings.

`deploy_homeservers()` runs them in order for the current host of a pyinfra run.
"""

from __future__ import annotations


def deploy_homeservers() -> None:
    """Deploy this host's homeservers, delegations, proxy, firewall and certificates from its host
    data (validated for every host first), then check federation from the controller. One run at
    a time per host: the run holds the host's deploy lock from its first change to its end."""
    from pyinfra import host, inventory
    from pyinfra.facts.server import LinuxDistribution

    from federate.deploy import (database, debian, dns_records, dumps, federation_check, firewall, proxy, restore,
                                 retired, synapse, system, tls)
    from federate.deploy.admin import admin_tokens
    from federate.inventory import refuse, settings_for
    from federate.pyinfra_ext.lease import lock_acquired, lock_released, lock_renewed

    settings = settings_for(inventory, host)
    distribution = host.get_fact(LinuxDistribution)
    if problem := debian.unsupported_problem(host.name, distribution):
        refuse(problem)  # before any other fact: those assume a Debian host
    release = debian.release_of(distribution)
    if problem := (database.backend_switch_problem(settings) or synapse.downgrade_problem(settings)
                   or synapse.metrics_bind_problem(settings) or restore.problem(settings)):
        refuse(problem)
    dns_records.announce(settings)
    lease = settings.lock.lease

    def renewed(before: str):
        lock_renewed(name=f"Deploy lock renewed before {before}", lease=lease)

    lock_acquired(name="Deploy lock: one run at a time on this host", lease=lease, wait=settings.lock.wait)
    chosen_proxy = proxy.proxy_for(settings, release)
    proxy.retire_other(settings)  # frees 80, 443 and 8448 for the chosen proxy before its package starts it
    system.packages(settings, chosen_proxy)
    renewed("the firewall")  # the slow steps (packages, the venv, certificates) each get a fresh lease
    firewall.configure(settings)
    proxy.http_site(chosen_proxy)
    certificate_ops = tls.certificates(settings, chosen_proxy.certificates, reload_marker=chosen_proxy.reload_marker)
    retired.retire_removed(settings)  # homeservers taken out of the inventory stop before the sites change
    if settings.homeservers:  # a delegation host only publishes well-known files
        renewed("Synapse")
        database.configure(settings, release)
        dumps.before_version_change(settings)  # schema migrations cannot be undone
        synapse.install_synapse(settings, release)
        admin_tokens(settings)  # for `federate destinations`, once Synapse answers
    renewed("the sites")
    proxy.homeserver_sites(chosen_proxy, certificate_ops)
    federation_check.after_deploy(settings)  # last: the federation check from the controller
    lock_released(name="Deploy lock released")
