"""caddy: one Caddyfile for port 80 and every site; with ACME caddy obtains the certificates itself."""

from __future__ import annotations

import posixpath
import shlex

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation

from federate.deploy.proxy import HSTS_MAX_AGE, Proxy, reload_if_changed
from federate.deploy.proxy.routes import worker_routes
from federate.deploy.templating import render
from federate.deploy.tls import CaddyAcme, wanted_certificates
from federate.pyinfra_ext import declared
from federate.pyinfra_ext.factcache import asks
from federate.pyinfra_ext.files import config_file, file_attributes
from federate.pyinfra_ext.owed import changed_or_owed, pending_marker, settled

CADDYFILE = "/etc/caddy/Caddyfile"
CADDY_CHECK = "caddy validate --adapter caddyfile --config {path}"
RELOAD = pending_marker("reload-caddy")
RESTART = pending_marker("restart-caddy")
# Where Debian's caddy (user caddy, HOME /var/lib/caddy) keeps the certificates it obtained.
CADDY_CERTIFICATES = "/var/lib/caddy/.local/share/caddy/certificates"
CADDY_CERT_WAIT_SECONDS = 240  # caddy retries a failed order after a minute, then later
# caddy's admin API: a Unix socket in a runtime directory of mode 0700 that systemd makes for the
# caddy user (a drop-in); `systemctl reload caddy` finds it through the Caddyfile's admin line.
ADMIN_SOCKET = "/run/caddy/admin.sock"
ADMIN_DROPIN = "/etc/systemd/system/caddy.service.d/federate-admin.conf"


def size_bytes(size: str) -> int:
    """'50M' (nginx's and Synapse's notation, binary units) in bytes."""
    factor = 1024 ** ("KMG".index(size[-1]) + 1) if size[-1] in "KMG" else 1
    return int(size.rstrip("KMG")) * factor


def _addresses(names, port: int) -> list[str]:
    return [f"{name}:{port}" for name in names]


def _uri_matches(patterns) -> str:
    """A CEL test of the raw request URI against any of `patterns` (RE2; they hold no quote or backslash)."""
    return '{http.request.uri}.matches("' + "|".join(f"(?:{p})" for p in patterns) + '")'


def worker_matchers(hs) -> list[dict]:
    """The homeserver's worker routes as caddy matchers that exclude each other (a route's patterns and
    none of an earlier route's, the main process what no route matches), so that, whatever order caddy
    sorts its handlers in, the first matching route wins as in nginx. Empty without listening workers."""
    routes, matchers, earlier = worker_routes(hs), [], []
    for route in routes:
        expression = _uri_matches(route.patterns) + (f" && !{_uri_matches(earlier)}" if earlier else "")
        matchers.append({"name": f"worker_{route.name}", "expression": expression, "balance": route.balance,
                         "upstreams": " ".join(f"127.0.0.1:{port}" for port in route.ports)})
        earlier += route.patterns
    if matchers:
        matchers.append({"name": "worker_main", "expression": f"!{_uri_matches(earlier)}", "balance": "",
                         "upstreams": f"127.0.0.1:{hs.port}"})
    return matchers


class Caddy(Proxy):
    name = "caddy"
    packages = ("caddy",)
    reload_marker = RELOAD
    acme = CaddyAcme
    key_owner = {"user": "root", "group": "caddy", "mode": "640"}  # caddy runs as caddy: it reads through its group

    def caddyfile_context(self) -> dict:
        settings, acme = self.settings, self.certificates.by_proxy
        homeservers = [{**self.site_context(hs), "workers": worker_matchers(hs), "addresses_443": _addresses(hs.proxy_names, 443),
                        "addresses_8448": _addresses(hs.proxy_names, 8448) if hs.federation_open else []}
                       for hs in settings.homeservers]
        delegations = [{**self.delegation_context(d), "addresses_443": _addresses([d.server_name], 443)}
                       for d in settings.delegations]
        return {"acme_directory": settings.tls.acme_directory if acme else "",
                "email": (settings.tls.email or "") if acme else "",
                "max_bytes": size_bytes(settings.max_upload_size), "hsts_max_age": HSTS_MAX_AGE,
                "admin_socket": ADMIN_SOCKET, "homeservers": homeservers, "delegations": delegations}

    def render_caddyfile(self) -> str:
        return render("Caddyfile.j2", **self.caddyfile_context())

    def http_site(self):
        """Port 80 (ACME challenges, redirect) comes from the one Caddyfile, written with the sites."""

    def sites(self, certificate_ops):
        declared.directory(name="caddy: unit drop-in dir", path=posixpath.dirname(ADMIN_DROPIN),
                           user="root", group="root", mode="755")
        dropin = config_file(name="caddy: admin socket directory (unit drop-in)", dest=ADMIN_DROPIN,
                             content=render("federate-admin.conf.j2", runtime_dir=posixpath.dirname(ADMIN_SOCKET)),
                             owes=RESTART)
        file_attributes(name="caddy: drop-in owner and mode", path=ADMIN_DROPIN, user="root", group="root", mode="644")
        caddyfile = config_file(name="Caddyfile", dest=CADDYFILE, content=self.render_caddyfile(),
                                check=CADDY_CHECK, owes=RELOAD)
        file_attributes(name="Caddyfile owner and mode", path=CADDYFILE, user="root", group="root", mode="644")
        # A reload reaches caddy at the admin address of the new Caddyfile: a caddy started before the
        # drop-in (its package's start, an older federate) listens elsewhere, so it is restarted once.
        restart = declared.service(name="caddy: restart onto the admin socket", service="caddy", running=True,
                                    restarted=True, daemon_reload=True, _if=changed_or_owed([dropin], RESTART))
        settled(name="caddy: restart done", marker=RESTART)
        # Not reloaded right after that restart: a reload cancels the certificate orders the
        # restart just started, and caddy may then wait minutes before it orders again.
        reload_if_changed("caddy", RELOAD, caddyfile, *certificate_ops, restarted=restart)
        if self.certificates.by_proxy:
            names = sorted({name for _, names in wanted_certificates(self.settings) for name in names})
            caddy_certificates(name="caddy: ACME certificates issued", names=names)


class CaddyMissingCertificates(FactBase):
    """The names caddy holds no certificate for yet (from any ACME directory)."""

    def command(self, names: list[str]) -> str:
        return " ".join(f"ls {CADDY_CERTIFICATES}/*/{n}/{n}.crt >/dev/null 2>&1 || echo {n};"
                        for n in map(shlex.quote, names)) + " true"

    def process(self, output):
        return [line.strip() for line in output if line.strip()]


@asks(lambda names, **_: [(CaddyMissingCertificates, {"names": names})])
@operation()
def caddy_certificates(names: list[str]):
    """Wait until caddy obtained every certificate: it does so in the background after a reload,
    and the deploy ends with a federation check that needs them."""
    missing = host.get_fact(CaddyMissingCertificates, names=names)
    if not missing:
        host.noop("caddy holds a certificate for every name")
        return
    test = " && ".join(f"ls {CADDY_CERTIFICATES}/*/{n}/{n}.crt" for n in map(shlex.quote, missing))
    yield StringCommand(f"for i in $(seq {CADDY_CERT_WAIT_SECONDS}); do {{ {test}; }} >/dev/null 2>&1"
                        f" && exit 0; sleep 1; done; echo 'caddy obtained no certificate for: "
                        f"{' '.join(missing)}; its last errors (journalctl -u caddy):' >&2; "
                        f"journalctl -u caddy --since -{CADDY_CERT_WAIT_SECONDS + 60}s --no-pager -o cat "
                        f"| grep -iE 'error|fail' | tail -n 5 >&2; exit 1")
