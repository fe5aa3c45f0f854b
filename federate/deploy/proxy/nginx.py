"""nginx: a port-80 site (ACME challenges, redirect) and one site file per homeserver and delegation."""

from __future__ import annotations

from pyinfra import host
from pyinfra.facts.files import FindFiles
from pyinfra.operations import files

from federate.deploy import paths
from federate.deploy.proxy import Proxy, reload_if_changed
from federate.deploy.proxy.routes import worker_routes as routes_for
from federate.deploy.templating import render
from federate.deploy.tls import Certbot
from federate.pyinfra_ext import declared
from federate.pyinfra_ext.files import config_file, file_attributes
from federate.pyinfra_ext.owed import pending_marker

SITES_DIR = "/etc/nginx/conf.d"
HTTP_SITE = f"{SITES_DIR}/federate-http.conf"
# nginx reads a whole tree, so a site is checked in place and rolled back when the tree fails.
NGINX_CHECK = "nginx -t -q"
RELOAD = pending_marker("reload-nginx")


def worker_routes(hs) -> dict:
    """The site template's view of a homeserver's worker routes (none: everything to the main process)."""
    routes = routes_for(hs)
    if not routes:
        return {"workers": None, "worker_backend": None}
    prefix = f"federate_{hs.os_user}"
    return {"workers": {"prefix": prefix, "variable": f"${prefix}_backend", "routes": routes},
            "worker_backend": f"${prefix}_backend"}


class Nginx(Proxy):
    name = "nginx"
    packages = ("nginx",)
    reload_marker = RELOAD
    acme = Certbot
    key_owner = {"user": "root", "group": "root", "mode": "600"}  # nginx reads keys as root

    def http2(self) -> dict:
        """How this host's nginx is told to speak HTTP/2 (the templates' listen_http2 and http2_on)."""
        on = self.release.nginx_http2_on
        return {"listen_http2": "" if on else " http2", "http2_on": on}

    def site_context(self, hs) -> dict:
        return {**super().site_context(hs), **self.http2(), **worker_routes(hs)}

    def delegation_context(self, delegation) -> dict:
        return {**super().delegation_context(delegation), **self.http2()}

    def wanted_sites(self) -> dict[str, str]:
        """Every site file this host serves (path -> content), homeservers and delegations alike."""
        sites = {f"{SITES_DIR}/federate-{hs.cert_name}.conf":
                 render("federate-homeserver.conf.j2", **self.site_context(hs)) for hs in self.settings.homeservers}
        sites.update({f"{SITES_DIR}/federate-{d.server_name}.conf":
                      render("federate-delegation.conf.j2", **self.delegation_context(d))
                      for d in self.settings.delegations})
        return sites

    def render_http_site(self) -> str:
        return render("federate-http.conf.j2", acme_webroot=paths.ACME_WEBROOT, tls_ports=self.tls_ports(),
                      **self.http2())

    def http_site(self):
        removed = declared.link(name="Debian's default site off", path="/etc/nginx/sites-enabled/default",
                                present=False)
        webroot = declared.directory(name="ACME webroot", path=paths.ACME_WEBROOT, mode="755")
        site = config_file(name="Port 80 site", dest=HTTP_SITE, check=NGINX_CHECK, check_in_place=True, owes=RELOAD,
                           content=self.render_http_site())
        file_attributes(name="Port 80 site owner and mode", path=HTTP_SITE, user="root", group="root", mode="644")
        reload_if_changed("nginx", RELOAD, removed, webroot, site)

    def sites(self, certificate_ops):
        sites = self.wanted_sites()
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
        reload_if_changed("nginx", RELOAD, *ops)
