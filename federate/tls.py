"""Certificates: ACME (certbot, HTTP-01 through nginx's port 80; caddy runs its own ACME client)
or user-provided files."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import StringCommand, deploy, operation
from pyinfra.operations import apt, files, systemd

from federate import paths
from federate.ops import PathExists, owed_before_uploads
from federate.settings import HostSettings, certificate_names

LETSENCRYPT_LIVE = "/etc/letsencrypt/live"


def certificate_paths(settings: HostSettings, cert_name: str) -> tuple[str, str]:
    """(certificate chain, private key) the proxy uses for the names of certificate `cert_name`."""
    base = f"{LETSENCRYPT_LIVE if settings.tls.mode == 'acme' else paths.PROVIDED_TLS_ROOT}/{cert_name}"
    return f"{base}/fullchain.pem", f"{base}/privkey.pem"


def wanted_certificates(settings: HostSettings) -> list[tuple[str, tuple[str, ...]]]:
    """(certificate name, the DNS names it covers) for every site this host serves."""
    return list(certificate_names(settings.homeservers, settings.delegations).items())


@operation()
def acme_certificate(names: list[str], cert_name: str, directory: str, email: str | None,
                     webroot: str, reload_command: str):
    """Obtain a certificate for `names` once; certbot's own timer renews it afterwards."""
    if host.get_fact(PathExists, path=f"{LETSENCRYPT_LIVE}/{cert_name}/fullchain.pem"):  # certbot's layout
        host.noop(f"certificate {cert_name} exists")
        return
    contact = f"-m {shlex.quote(email)}" if email else "--register-unsafely-without-email"
    domains = " ".join(f"-d {shlex.quote(n)}" for n in names)
    yield StringCommand(
        f"certbot certonly --non-interactive --agree-tos {contact} --server {shlex.quote(directory)}"
        f" --webroot -w {webroot} --cert-name {shlex.quote(cert_name)} {domains}"
        f" --deploy-hook {shlex.quote(reload_command)}"
    )


@deploy("TLS certificates")
def certificates(settings: HostSettings, reload_command: str, reload_marker: str):
    """Needs the proxy's port-80 site up first (it serves the ACME challenges).

    Returns the operations whose change means the proxy must reload.
    """
    ops = []
    if settings.proxy == "caddy":
        _certbot_off()
        if settings.tls.mode == "acme":
            return ops  # caddy obtains and renews its certificates itself
    elif settings.tls.mode == "acme":
        apt.packages(name="certbot", packages=["certbot"])
        # back from caddy, which turned them off
        systemd.service(name="certbot renewals on", service="certbot.timer", running=True, enabled=True)
        for cert_name, names in host.loop(wanted_certificates(settings)):
            ops.append(acme_certificate(name=f"{cert_name}: ACME certificate", names=names,
                                        cert_name=cert_name, directory=settings.tls.acme_directory,
                                        email=settings.tls.email, webroot=paths.ACME_WEBROOT,
                                        reload_command=reload_command))
        return ops
    for cert_name, _ in host.loop(wanted_certificates(settings)):
        given = settings.tls.certificates[cert_name]
        cert, key = certificate_paths(settings, cert_name)
        owed_before_uploads(name=f"{cert_name}: proxy reload owed for new files", marker=reload_marker,
                            uploads=[(given["cert"], cert), (given["key"], key)])
        ops.append(files.put(name=f"{cert_name}: certificate", src=given["cert"], dest=cert,
                             mode="644", create_remote_dir=True))
        ops.append(files.put(name=f"{cert_name}: private key", src=given["key"], dest=key,
                             create_remote_dir=True, **_key_access(settings)))
    return ops


def _key_access(settings: HostSettings) -> dict:
    """nginx reads keys as root; caddy runs as user caddy and reads them through its group."""
    if settings.proxy == "caddy":
        return {"user": "root", "group": "caddy", "mode": "640"}
    return {"mode": "600"}


def _certbot_off():
    """A host switched from nginx keeps certbot's package: its renewals would fail without nginx."""
    systemd.service(name="certbot renewals off (caddy renews)", service="certbot.timer",
                    running=False, enabled=False)
