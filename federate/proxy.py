"""The reverse proxy (nginx or caddy): TLS on 443 and 8448 per server name, well-known files, port 80."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, deploy, operation
from pyinfra.facts.files import FindFiles
from pyinfra.operations import apt, files, systemd

from federate import paths, wellknown
from federate.settings import Delegation, Homeserver, HostSettings
from federate.ops import changed_or_owed, config_file, file_attributes, pending_marker, settled
from federate.templates import render
from federate.tls import certificate_paths, wanted_certificates

SITES_DIR = "/etc/nginx/conf.d"
HTTP_SITE = f"{SITES_DIR}/federate-http.conf"
RELOAD_COMMAND = "systemctl reload nginx"
# nginx reads a whole tree, so a site is checked in place and rolled back when the tree fails.
NGINX_CHECK = "nginx -t -q"


def site_context(settings: HostSettings, hs: Homeserver) -> dict:
    cert, key = certificate_paths(settings, hs.cert_name)
    return {"hs": hs, "cert": cert, "key": key, "max_upload_size": settings.max_upload_size,
            **wellknown.documents_json(hs, serve_server=hs.serves_server_well_known)}


def delegation_context(settings: HostSettings, delegation: Delegation) -> dict:
    cert, key = certificate_paths(settings, delegation.server_name)
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

CADDYFILE = "/etc/caddy/Caddyfile"
CADDY_CHECK = "caddy validate --adapter caddyfile --config {path}"
CADDY_RELOAD = pending_marker("reload-caddy")
# Where Debian's caddy (user caddy, HOME /var/lib/caddy) keeps the certificates it obtained.
CADDY_CERTIFICATES = "/var/lib/caddy/.local/share/caddy/certificates"
CADDY_CERT_WAIT_SECONDS = 120


def reload_marker(settings: HostSettings) -> str:
    """The marker saying the chosen proxy owes a reload."""
    return CADDY_RELOAD if settings.proxy == "caddy" else RELOAD


def _reload_if(service: str, marker: str, *ops):
    systemd.service(name=f"{service}: reload on change", service=service, running=True,
                    reloaded=True, _if=changed_or_owed(list(ops), marker))
    systemd.service(name=f"{service}: running and enabled", service=service, running=True, enabled=True)
    settled(name=f"{service}: reload done", marker=marker)


@deploy("Proxy: the other proxy off")
def retire_other(settings: HostSettings):
    """Stop and disable the proxy not chosen, so the chosen one gets ports 80, 443 and 8448.

    Runs before packages are installed: a proxy's package starts it, which fails on taken ports.
    """
    other = "nginx" if settings.proxy == "caddy" else "caddy"
    systemd.service(name=f"{other}: stopped and disabled (proxy is {settings.proxy})", service=other,
                    running=False, enabled=False)


@deploy("Proxy: port 80")
def http_site(settings: HostSettings):
    # caddy serves port 80 (ACME challenges, redirect) from the one Caddyfile, written with the sites
    if settings.proxy == "nginx":
        _nginx_http_site(settings)


def _nginx_http_site(settings: HostSettings):
    apt.packages(name="nginx", packages=["nginx"])
    removed = files.link(name="Debian's default site off", path="/etc/nginx/sites-enabled/default",
                         present=False)
    webroot = files.directory(name="ACME webroot", path=paths.ACME_WEBROOT, mode="755")
    site = config_file(name="Port 80 site", dest=HTTP_SITE, check=NGINX_CHECK, check_in_place=True, owes=RELOAD,
                       content=render("federate-http.conf.j2", acme_webroot=paths.ACME_WEBROOT))
    file_attributes(name="Port 80 site owner and mode", path=HTTP_SITE, user="root", group="root", mode="644")
    _reload_if("nginx", RELOAD, removed, webroot, site)


@deploy("Proxy: homeserver sites")
def homeserver_sites(settings: HostSettings, certificate_ops: list):
    if settings.proxy == "caddy":
        _caddy_sites(settings, certificate_ops)
    else:
        _nginx_sites(settings, certificate_ops)


def _nginx_sites(settings: HostSettings, certificate_ops: list):
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
    _reload_if("nginx", RELOAD, *ops)


# ---------------------------------------------------------------- caddy

def size_bytes(size: str) -> int:
    """'50M' (nginx's and Synapse's notation, binary units) in bytes."""
    factor = 1024 ** ("KMG".index(size[-1]) + 1) if size[-1] in "KMG" else 1
    return int(size.rstrip("KMG")) * factor


def _addresses(names, federation: bool) -> list[str]:
    ports = (443, 8448) if federation else (443,)
    return [f"{name}:{port}" for port in ports for name in names]


def _caddy_tls(settings: HostSettings, cert_name: str) -> dict:
    """Provided files go into the site; with ACME caddy obtains the certificates itself."""
    if settings.tls.mode != "provided":
        return {"cert": "", "key": ""}
    cert, key = certificate_paths(settings, cert_name)
    return {"cert": cert, "key": key}


def caddyfile_context(settings: HostSettings) -> dict:
    acme = settings.tls.mode == "acme"
    # the nginx sites' contexts, with caddy's addresses and certificate files
    homeservers = [{**site_context(settings, hs), **_caddy_tls(settings, hs.cert_name),
                    "addresses": _addresses(hs.proxy_names, hs.federation_open)}
                   for hs in settings.homeservers]
    delegations = [{**delegation_context(settings, d), **_caddy_tls(settings, d.server_name),
                    "addresses": _addresses([d.server_name], federation=False)}
                   for d in settings.delegations]
    return {"acme_directory": settings.tls.acme_directory if acme else "",
            "email": (settings.tls.email or "") if acme else "",
            "max_bytes": size_bytes(settings.max_upload_size),
            "homeservers": homeservers, "delegations": delegations}


def render_caddyfile(settings: HostSettings) -> str:
    return render("Caddyfile.j2", **caddyfile_context(settings))


def _caddy_sites(settings: HostSettings, certificate_ops: list):
    caddyfile = config_file(name="Caddyfile", dest=CADDYFILE, content=render_caddyfile(settings),
                            check=CADDY_CHECK, owes=CADDY_RELOAD)
    file_attributes(name="Caddyfile owner and mode", path=CADDYFILE, user="root", group="root", mode="644")
    _reload_if("caddy", CADDY_RELOAD, caddyfile, *certificate_ops)
    if settings.tls.mode == "acme":
        names = sorted({name for _, names in wanted_certificates(settings) for name in names})
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
