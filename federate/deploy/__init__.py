"""The deploy: one module per component, each a pyinfra `@deploy` reading validated settings.

`deploy_homeservers()` runs them in order for the current host of a pyinfra run.
"""

from __future__ import annotations


def deploy_homeservers() -> None:
    """Deploy this host's homeservers, delegations, proxy, firewall and certificates from its host
    data (validated for every host first), then check federation from the controller."""
    from pyinfra import host, inventory

    from federate.deploy import database, dns_records, federation_check, firewall, proxy, synapse, system, tls
    from federate.inventory import refuse, settings_for

    settings = settings_for(inventory, host)
    if problem := database.backend_switch_problem(settings) or synapse.downgrade_problem(settings):
        refuse(problem)
    dns_records.announce(settings)

    proxy.retire_other(settings)  # frees 80, 443 and 8448 for the chosen proxy before its package starts it
    system.packages(settings)
    firewall.configure(settings)
    proxy.http_site(settings)
    chosen_proxy = proxy.proxy_for(settings)
    certificate_ops = tls.certificates(settings, chosen_proxy.certificates, reload_marker=chosen_proxy.reload_marker)
    if settings.homeservers:  # a delegation host only publishes well-known files
        database.configure(settings)
        synapse.install_synapse(settings)
    proxy.homeserver_sites(settings, certificate_ops)
    federation_check.after_deploy(settings)  # last: the federation check from the controller
