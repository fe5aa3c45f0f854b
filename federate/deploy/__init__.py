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
    from federate.pyinfra_ext.factcache import facts_read, facts_read_here, read_together
    from federate.pyinfra_ext.lease import lock_acquired, lock_released, lock_renewed
    from federate.pyinfra_ext.planning import install

    install()

    settings = settings_for(inventory, host)
    # what planning asks, in one round trip (the other facts read nothing a non-Debian host lacks)
    read_together([(LinuxDistribution, {}), *planning_facts(settings)])
    distribution = host.get_fact(LinuxDistribution)
    if problem := debian.unsupported_problem(host.name, distribution):
        refuse(problem)  # before any fact is asked alone: those assume a Debian host
    release = debian.release_of(distribution)
    if problem := (database.backend_switch_problem(settings) or synapse.downgrade_problem(settings)
                   or synapse.metrics_bind_problem(settings) or restore.problem(settings)):
        refuse(problem)
    dns_records.announce(settings)
    lease = settings.lock.lease

    def renewed(before: str):
        lock_renewed(name=f"Deploy lock renewed before {before}", lease=lease)

    lock_acquired(name="Deploy lock: one run at a time on this host", lease=lease, wait=settings.lock.wait)
    # Every fact the operations below ask, read in one round trip once the lock is held; after an
    # operation changed the host, each component's own read gets what is left anew.
    facts_read(name="Host state read")
    chosen_proxy = proxy.proxy_for(settings, release)
    proxy.retire_other(settings)  # frees 80, 443 and 8448 for the chosen proxy before its package starts it
    # Synapse's venv, when it is to be made, is made in the background while the packages install
    system.lists_and_first(settings, chosen_proxy, first=synapse.PACKAGES if settings.homeservers else ())
    venv_started = synapse.venv_started(settings, release) if settings.homeservers else None
    system.packages(settings, chosen_proxy)
    renewed("the firewall")  # the slow steps (packages, the venv, certificates) each get a fresh lease
    facts_read_here("Host state read: firewall")
    firewall.configure(settings)
    facts_read_here("Host state read: port 80, certificates")
    proxy.http_site(chosen_proxy)
    certificate_ops = tls.certificates(settings, chosen_proxy.certificates, reload_marker=chosen_proxy.reload_marker)
    retired.retire_removed(settings)  # homeservers taken out of the inventory stop before the sites change
    if settings.homeservers:  # a delegation host only publishes well-known files
        renewed("Synapse")
        synapse.venv_waited(venv_started)
        facts_read_here("Host state read: database, Synapse")
        database.configure(settings, release)
        dumps.before_version_change(settings)  # schema migrations cannot be undone
        synapse.install_synapse(settings, venv_started)
        admin_tokens(settings)  # for `federate destinations`, once Synapse answers
    renewed("the sites")
    facts_read_here("Host state read: sites")
    proxy.homeserver_sites(chosen_proxy, certificate_ops)
    federation_check.after_deploy(settings)  # last: the federation check from the controller
    lock_released(name="Deploy lock released")


def planning_facts(settings) -> list:
    """The facts the components ask while the run is planned (some of them twice), as (class, kwargs)."""
    from pyinfra.facts.deb import DebPackages
    from pyinfra.facts.files import File, FindFiles
    from pyinfra.facts.hardware import NetworkDevices

    from federate.deploy import database, paths, restore, workers
    from federate.deploy.proxy.nginx import SITES_DIR
    from federate.deploy.retired import ConfiguredHomeservers
    from federate.deploy.venv import VenvDistributions

    facts = [(NetworkDevices, {}), (ConfiguredHomeservers, {}), (DebPackages, {}),
             (VenvDistributions, {"venv": paths.VENV})]
    if settings.database == "postgres":
        facts.append((database.PostgresClusters, {}))
    if settings.proxy == "nginx":
        facts.append((FindFiles, {"path": SITES_DIR, "fname": "federate-*.conf"}))
    facts.append((workers.WorkerFiles, {}))  # retired homeservers' too
    for hs in settings.homeservers:
        facts.append((File, {"path": database.sqlite_path(hs)}))
        if hs.restore is not None:
            facts.append((restore.HomeserverDataState, restore.state_arguments(settings, hs)))
    return facts
