"""The reverse proxy (nginx): TLS on 443 and 8448 per server name, well-known files, ACME port 80."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import FindFiles
from pyinfra.operations import apt, files, systemd

from federate import paths, wellknown
from federate.settings import Delegation, Homeserver, HostSettings
from federate.ops import changed_or_owed, config_file, file_attributes, pending_marker, settled
from federate.templates import render
from federate.tls import certificate_paths, certificate_paths_for

SITES_DIR = "/etc/nginx/conf.d"
HTTP_SITE = f"{SITES_DIR}/federate-http.conf"
RELOAD_COMMAND = "systemctl reload nginx"
# nginx reads a whole tree, so a site is checked in place and rolled back when the tree fails.
NGINX_CHECK = "nginx -t -q"


def site_context(settings: HostSettings, hs: Homeserver) -> dict:
    cert, key = certificate_paths(settings, hs)
    return {"hs": hs, "cert": cert, "key": key, "max_upload_size": settings.max_upload_size,
            **wellknown.documents_json(hs, serve_server=hs.serves_server_well_known)}


def delegation_context(settings: HostSettings, delegation: Delegation) -> dict:
    cert, key = certificate_paths_for(settings, delegation.server_name)
    return {"server_name": delegation.server_name, "public_host": delegation.public_host,
            "cert": cert, "key": key, **wellknown.documents_json(delegation)}


def wanted_sites(settings: HostSettings) -> dict[str, str]:
    """Every site file this host serves (path -> content), homeservers and delegations alike."""
    sites = {f"{SITES_DIR}/federate-{hs.cert_name}.conf":
             render("federate-homeserver.conf.j2", **site_context(settings, hs)) for hs in settings.homeservers}
    sites.update({f"{SITES_DIR}/federate-{d.server_name}.conf":
                  render("federate-delegation.conf.j2", **delegation_context(settings, d))
                  for d in settings.delegations})
    return sites


RELOAD = pending_marker("reload-nginx")


def _reload_if(*ops):
    systemd.service(name="nginx: reload on change", service="nginx", running=True,
                    reloaded=True, _if=changed_or_owed(list(ops), RELOAD))
    systemd.service(name="nginx: running and enabled", service="nginx", running=True, enabled=True)
    settled(name="nginx: reload done", marker=RELOAD)


@deploy("Proxy: port 80")
def http_site(settings: HostSettings):
    apt.packages(name="nginx", packages=["nginx"])
    removed = files.link(name="Debian's default site off", path="/etc/nginx/sites-enabled/default",
                         present=False)
    webroot = files.directory(name="ACME webroot", path=paths.ACME_WEBROOT, mode="755")
    site = config_file(name="Port 80 site", dest=HTTP_SITE, check=NGINX_CHECK, check_in_place=True, owes=RELOAD,
                       content=render("federate-http.conf.j2", acme_webroot=paths.ACME_WEBROOT))
    file_attributes(name="Port 80 site owner and mode", path=HTTP_SITE, user="root", group="root", mode="644")
    _reload_if(removed, webroot, site)


@deploy("Proxy: homeserver sites")
def homeserver_sites(settings: HostSettings, certificate_ops: list):
    sites = wanted_sites(settings)
    ops = list(certificate_ops)
    for path, content in host.loop(sorted(sites.items())):
        label = path.rsplit("/federate-", 1)[1].removesuffix(".conf")
        ops.append(config_file(name=f"{label}: site", dest=path, check=NGINX_CHECK, check_in_place=True,
                               content=content, owes=RELOAD))
        file_attributes(name=f"{label}: site owner and mode", path=path, user="root", group="root", mode="644")
    # Sites of homeservers no longer in the settings would keep answering: remove them.
    wanted = set(sites) | {HTTP_SITE}
    for stale in host.loop(sorted(set(host.get_fact(FindFiles, path=SITES_DIR, fname="federate-*.conf")
                                      or []) - wanted)):
        ops.append(files.file(name=f"Remove stale site {stale}", path=stale, present=False))
    _reload_if(*ops)
