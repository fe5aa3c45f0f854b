"""The reverse proxy (nginx): TLS on 443 and 8448 per server name, well-known files, ACME port 80."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import FindFiles
from pyinfra.operations import apt, files, systemd
from pyinfra.operations.util import any_changed

from federate import paths, wellknown
from federate.settings import Homeserver, HostSettings
from federate.ops import config_file, file_attributes
from federate.templates import render
from federate.tls import certificate_paths

SITES_DIR = "/etc/nginx/conf.d"
HTTP_SITE = f"{SITES_DIR}/federate-http.conf"
RELOAD_COMMAND = "systemctl reload nginx"
# nginx reads a whole tree, so a site is checked in place and rolled back when the tree fails.
NGINX_CHECK = "nginx -t -q"


def site_path(hs: Homeserver) -> str:
    return f"{SITES_DIR}/federate-{hs.host_name}.conf"


def site_context(settings: HostSettings, hs: Homeserver) -> dict:
    cert, key = certificate_paths(settings, hs)
    return {
        "hs": hs,
        "cert": cert,
        "key": key,
        "server_json": wellknown.as_json(wellknown.server_document(hs)),
        "client_json": wellknown.as_json(wellknown.client_document(hs)),
        "max_upload_size": settings.max_upload_size,
    }


def _reload_if(*ops):
    systemd.service(name="nginx: reload on change", service="nginx", running=True,
                    reloaded=True, _if=any_changed(*ops))
    systemd.service(name="nginx: running and enabled", service="nginx", running=True, enabled=True)


@deploy("Proxy: port 80")
def http_site(settings: HostSettings):
    apt.packages(name="nginx", packages=["nginx"])
    removed = files.link(name="Debian's default site off", path="/etc/nginx/sites-enabled/default",
                         present=False)
    webroot = files.directory(name="ACME webroot", path=paths.ACME_WEBROOT, mode="755")
    site = config_file(name="Port 80 site", dest=HTTP_SITE, check=NGINX_CHECK, check_in_place=True,
                       content=render("federate-http.conf.j2", acme_webroot=paths.ACME_WEBROOT))
    file_attributes(name="Port 80 site owner and mode", path=HTTP_SITE, user="root", group="root", mode="644")
    _reload_if(removed, webroot, site)


@deploy("Proxy: homeserver sites")
def homeserver_sites(settings: HostSettings, certificate_ops: list):
    wanted = {site_path(hs) for hs in settings.homeservers} | {HTTP_SITE}
    ops = list(certificate_ops)
    for hs in host.loop(settings.homeservers):
        ops.append(config_file(name=f"{hs.server_name}: site", dest=site_path(hs), check=NGINX_CHECK,
                               check_in_place=True,
                               content=render("federate-homeserver.conf.j2", **site_context(settings, hs))))
        file_attributes(name=f"{hs.server_name}: site owner and mode", path=site_path(hs),
                        user="root", group="root", mode="644")
    # Sites of homeservers no longer in the settings would keep answering: remove them.
    for stale in host.loop(sorted(set(host.get_fact(FindFiles, path=SITES_DIR, fname="federate-*.conf")
                                      or []) - wanted)):
        ops.append(files.file(name=f"Remove stale site {stale}", path=stale, present=False))
    _reload_if(*ops)
