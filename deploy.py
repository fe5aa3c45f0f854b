"""federate: Synapse homeservers that federate. Run: pyinfra INVENTORY deploy.py"""

from pyinfra import host, inventory

from federate import database, dns, firewall, proxy, synapse, system, tls, verify
from federate.inventory import refuse, settings_for

settings = settings_for(inventory, host)
if problem := database.backend_switch_problem(settings) or synapse.downgrade_problem(settings):
    refuse(problem)
dns.announce(settings)

proxy.retire_other(settings)  # frees 80, 443 and 8448 for the chosen proxy before its package starts it
system.packages(settings)
firewall.configure(settings)
proxy.http_site(settings)
certificate_ops = tls.certificates(settings, reload_command=proxy.RELOAD_COMMAND,
                                   reload_marker=proxy.reload_marker(settings))
if settings.homeservers:  # a delegation host only publishes well-known files
    database.configure(settings)
    synapse.install_synapse(settings)
proxy.homeserver_sites(settings, certificate_ops)
verify.after_deploy(settings)  # last: the federation check from the controller
