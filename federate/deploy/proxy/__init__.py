"""The reverse proxy, one strategy per host: nginx (with certbot) or caddy (its own ACME client).

Both terminate TLS on 443 and 8448 for each server name, serve the well-known files with a plain
200, answer port 80, and send `/_matrix` and `/_synapse/client` to Synapse on loopback.
`proxy_for(settings, release)` picks the strategy once; the deploys below only call its interface.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from federate.deploy import wellknown
from federate.deploy.debian import Release
from federate.deploy.tls import Certificates, tls_for
from federate.pyinfra_ext import declared
from federate.pyinfra_ext.owed import changed_or_owed, settled
from federate.settings import Delegation, Homeserver, HostSettings


# Strict-Transport-Security on 443: two years, Mozilla's recommendation.
HSTS_MAX_AGE = 63072000


class Proxy:
    """What a reverse proxy does for the deploy."""

    name: str
    packages: tuple[str, ...]
    reload_marker: str  # the pending marker of an owed reload
    acme: type[Certificates]  # who gets ACME certificates for this proxy
    key_owner: dict  # {user, group, mode} of provided private keys, so the proxy can read them

    def __init__(self, settings: HostSettings, release: Release):
        self.settings, self.release = settings, release
        self.certificates: Certificates = tls_for(settings, self.acme, self.key_owner)

    def http_site(self) -> None:
        """Port 80, before certificates are asked for (ACME HTTP-01)."""

    def tls_ports(self) -> list[int]:
        """The TLS ports this host's proxy listens on: 8448 only when a homeserver federates."""
        return [443, *([8448] if any(hs.federation_open for hs in self.settings.homeservers) else [])]

    def sites(self, certificate_ops: list) -> None:
        """The TLS sites of every homeserver and delegation; reload when anything changed."""
        raise NotImplementedError

    # shared by both proxies' templates
    def site_context(self, hs: Homeserver) -> dict:
        cert, key = self.certificates.files(hs.cert_name) or ("", "")
        return {"hs": hs, "cert": cert, "key": key, "max_upload_size": self.settings.max_upload_size,
                "hsts_max_age": HSTS_MAX_AGE, **wellknown.documents_json(hs, serve_server=hs.serves_server_well_known)}

    def delegation_context(self, delegation: Delegation) -> dict:
        cert, key = self.certificates.files(delegation.server_name) or ("", "")
        return {"server_name": delegation.server_name, "public_host": delegation.public_host,
                "cert": cert, "key": key, "hsts_max_age": HSTS_MAX_AGE, **wellknown.documents_json(delegation)}


def proxies() -> dict[str, type[Proxy]]:
    from federate.deploy.proxy.caddy import Caddy
    from federate.deploy.proxy.nginx import Nginx

    return {"nginx": Nginx, "caddy": Caddy}


def proxy_for(settings: HostSettings, release: Release) -> Proxy:
    """The host's proxy strategy; `release` is the host's Debian release."""
    return proxies()[settings.proxy](settings, release)


def reload_if_changed(service: str, marker: str, *ops, restarted=None) -> None:
    """Reload `service` when one of `ops` changed something or an earlier run owes the reload, unless
    the operation `restarted` restarted it in this run (it read the new files then)."""
    conditions = [changed_or_owed(list(ops), marker)]
    if restarted is not None:
        conditions.append(lambda: not restarted.did_change())
    declared.service(name=f"{service}: reload on change", service=service, running=True,
                     reloaded=True, _if=conditions)
    declared.service(name=f"{service}: running and enabled", service=service, running=True, enabled=True)
    settled(name=f"{service}: reload done", marker=marker)


@deploy("Proxy: the other proxy off")
def retire_other(settings: HostSettings):
    """Stop and disable the proxy not chosen, so the chosen one gets ports 80, 443 and 8448.

    Runs before packages are installed: a proxy's package starts it, which fails on taken ports.
    """
    for other in host.loop([name for name in proxies() if name != settings.proxy]):
        declared.service(name=f"{other}: stopped and disabled (proxy is {settings.proxy})", service=other,
                         running=False, enabled=False)


@deploy("Proxy: port 80")
def http_site(chosen: Proxy):
    chosen.http_site()


@deploy("Proxy: homeserver sites")
def homeserver_sites(chosen: Proxy, certificate_ops: list):
    chosen.sites(certificate_ops)
