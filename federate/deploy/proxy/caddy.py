"""caddy: one Caddyfile for port 80 and every site; with ACME caddy obtains the certificates itself."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation

from federate.deploy.proxy import Proxy, reload_if_changed
from federate.deploy.templating import render
from federate.deploy.tls import CaddyAcme, wanted_certificates
from federate.pyinfra_ext.files import config_file, file_attributes
from federate.pyinfra_ext.owed import pending_marker

CADDYFILE = "/etc/caddy/Caddyfile"
CADDY_CHECK = "caddy validate --adapter caddyfile --config {path}"
RELOAD = pending_marker("reload-caddy")
# Where Debian's caddy (user caddy, HOME /var/lib/caddy) keeps the certificates it obtained.
CADDY_CERTIFICATES = "/var/lib/caddy/.local/share/caddy/certificates"
CADDY_CERT_WAIT_SECONDS = 120


def size_bytes(size: str) -> int:
    """'50M' (nginx's and Synapse's notation, binary units) in bytes."""
    factor = 1024 ** ("KMG".index(size[-1]) + 1) if size[-1] in "KMG" else 1
    return int(size.rstrip("KMG")) * factor


def _addresses(names, federation: bool) -> list[str]:
    ports = (443, 8448) if federation else (443,)
    return [f"{name}:{port}" for port in ports for name in names]


class Caddy(Proxy):
    name = "caddy"
    packages = ("caddy",)
    reload_marker = RELOAD
    acme = CaddyAcme
    key_owner = {"user": "root", "group": "caddy", "mode": "640"}  # caddy runs as caddy: it reads through its group

    def caddyfile_context(self) -> dict:
        settings, acme = self.settings, self.certificates.by_proxy
        homeservers = [{**self.site_context(hs), "addresses": _addresses(hs.proxy_names, hs.federation_open)}
                       for hs in settings.homeservers]
        delegations = [{**self.delegation_context(d), "addresses": _addresses([d.server_name], federation=False)}
                       for d in settings.delegations]
        return {"acme_directory": settings.tls.acme_directory if acme else "",
                "email": (settings.tls.email or "") if acme else "",
                "max_bytes": size_bytes(settings.max_upload_size),
                "homeservers": homeservers, "delegations": delegations}

    def render_caddyfile(self) -> str:
        return render("Caddyfile.j2", **self.caddyfile_context())

    def http_site(self):
        """Port 80 (ACME challenges, redirect) comes from the one Caddyfile, written with the sites."""

    def sites(self, certificate_ops):
        caddyfile = config_file(name="Caddyfile", dest=CADDYFILE, content=self.render_caddyfile(),
                                check=CADDY_CHECK, owes=RELOAD)
        file_attributes(name="Caddyfile owner and mode", path=CADDYFILE, user="root", group="root", mode="644")
        reload_if_changed("caddy", RELOAD, caddyfile, *certificate_ops)
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
                        f"{' '.join(missing)} (journalctl -u caddy)' >&2; exit 1")
