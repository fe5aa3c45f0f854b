"""Certificates: ACME (certbot, HTTP-01 through the proxy's port 80) or user-provided files."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import StringCommand, deploy, operation
from pyinfra.operations import apt, files

from federate import paths
from federate.ops import PathExists
from federate.settings import Homeserver, HostSettings

LETSENCRYPT_LIVE = "/etc/letsencrypt/live"


def certificate_paths(settings: HostSettings, hs: Homeserver) -> tuple[str, str]:
    """(certificate chain, private key) the proxy uses for this homeserver's names."""
    if settings.tls.mode == "acme":
        base = f"{LETSENCRYPT_LIVE}/{hs.host_name}"
        return f"{base}/fullchain.pem", f"{base}/privkey.pem"
    base = f"{paths.PROVIDED_TLS_ROOT}/{hs.host_name}"
    return f"{base}/fullchain.pem", f"{base}/privkey.pem"


@operation()
def acme_certificate(names: list[str], cert_name: str, directory: str, email: str | None,
                     webroot: str, reload_command: str):
    """Obtain a certificate for `names` once; certbot's own timer renews it afterwards."""
    if host.get_fact(PathExists, path=f"{LETSENCRYPT_LIVE}/{cert_name}/fullchain.pem"):
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
def certificates(settings: HostSettings, reload_command: str):
    """Needs the proxy's port-80 site up first (it serves the ACME challenges).

    Returns the operations whose change means the proxy must reload.
    """
    ops = []
    if settings.tls.mode == "acme":
        apt.packages(name="certbot", packages=["certbot"])
        for hs in host.loop(settings.homeservers):
            ops.append(acme_certificate(name=f"{hs.server_name}: ACME certificate", names=list(hs.proxy_names),
                             cert_name=hs.host_name, directory=settings.tls.acme_directory,
                             email=settings.tls.email, webroot=paths.ACME_WEBROOT,
                             reload_command=reload_command))
        return ops
    for hs in host.loop(settings.homeservers):
        given = settings.tls.certificates[hs.host_name]
        cert, key = certificate_paths(settings, hs)
        ops.append(files.put(name=f"{hs.server_name}: certificate", src=given["cert"], dest=cert,
                             mode="644", create_remote_dir=True))
        ops.append(files.put(name=f"{hs.server_name}: private key", src=given["key"], dest=key,
                             mode="600", create_remote_dir=True))
    return ops
