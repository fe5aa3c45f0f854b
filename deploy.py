"""federate: Synapse homeservers that federate. Run: pyinfra INVENTORY deploy.py"""

from pyinfra import host, inventory

from federate import firewall, proxy, synapse, system, tls
from federate.inventory import settings_for

settings = settings_for(inventory, host)

system.packages(settings)
firewall.configure(settings)
proxy.http_site(settings)
certificate_ops = tls.certificates(settings, reload_command=proxy.RELOAD_COMMAND)
synapse.install_synapse(settings)
proxy.homeserver_sites(settings, certificate_ops)
