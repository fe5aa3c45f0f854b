"""Certificates, one strategy per host: certbot (ACME through nginx's port 80), caddy's own ACME
client, or files the user provides. The proxy picks it once (`tls_for`): its own ACME way, or the
files, owned so it can read the keys."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, deploy, operation
from pyinfra.operations import files

from federate.deploy import paths
from federate.deploy.retired import ConfiguredHomeservers, retired_certificates
from federate.pyinfra_ext import declared
from federate.pyinfra_ext.factcache import asks
from federate.pyinfra_ext.facts import PathExists
from federate.pyinfra_ext.files import private_file
from federate.pyinfra_ext.owed import owed_before_uploads
from federate.settings import HostSettings, certificate_names

LETSENCRYPT_LIVE = "/etc/letsencrypt/live"
LETSENCRYPT_RENEWAL = "/etc/letsencrypt/renewal"
# Renewal files of federate's certificates that no site needs any more (a retired homeserver, a
# dropped delegation): kept, so the certificate comes back with its name, but not renewed.
RENEWAL_PARKED = "/etc/letsencrypt/renewal-parked"
NGINX_RELOAD_COMMAND = "systemctl reload nginx"


def wanted_certificates(settings: HostSettings) -> list[tuple[str, tuple[str, ...]]]:
    """(certificate name, the DNS names it covers) for every site this host serves."""
    return list(certificate_names(settings.homeservers, settings.delegations).items())


class Certificates:
    """Where a host's certificates come from. `files(name)` is (chain, key) on the host, or None
    when the proxy obtains and keeps them itself; `deploy` returns the operations whose change
    means the proxy must reload."""

    packages: tuple[str, ...] = ()
    by_proxy = False  # the proxy itself obtains and renews them (its config names the ACME directory)

    def files(self, cert_name: str) -> tuple[str, str] | None:
        raise NotImplementedError

    def deploy(self, settings: HostSettings, reload_marker: str) -> list:
        raise NotImplementedError


class Certbot(Certificates):
    """ACME with certbot's webroot plugin (HTTP-01 served by nginx's port-80 site); certbot's
    own timer renews and its deploy hook reloads nginx."""

    packages = ("certbot",)

    def files(self, cert_name):
        base = f"{LETSENCRYPT_LIVE}/{cert_name}"
        return f"{base}/fullchain.pem", f"{base}/privkey.pem"

    def deploy(self, settings, reload_marker):
        # back from caddy, which turned them off
        declared.service(name="certbot renewals on", service="certbot.timer", running=True, enabled=True)
        configured = host.get_fact(ConfiguredHomeservers)
        renewals(name="certbot renews only what the sites need", wanted=[name for name, _ in wanted_certificates(settings)],
                 retired=retired_certificates(settings, configured), reload_command=NGINX_RELOAD_COMMAND)
        return [acme_certificate(name=f"{cert_name}: ACME certificate", names=names, cert_name=cert_name,
                                 directory=settings.tls.acme_directory, email=settings.tls.email,
                                 webroot=paths.ACME_WEBROOT, reload_command=NGINX_RELOAD_COMMAND)
                for cert_name, names in host.loop(wanted_certificates(settings))]


class CaddyAcme(Certificates):
    """caddy obtains and renews its certificates itself (federate.deploy.proxy.caddy waits for them)."""

    by_proxy = True

    def files(self, cert_name):
        return None

    def deploy(self, settings, reload_marker):
        _certbot_off()
        return []


class Provided(Certificates):
    """The user's own files, checked on the controller while validating, uploaded as they are."""

    def __init__(self, key_owner: dict):
        self.key_owner = key_owner  # {user, group, mode} the proxy needs to read the key

    def files(self, cert_name):
        base = f"{paths.PROVIDED_TLS_ROOT}/{cert_name}"
        return f"{base}/fullchain.pem", f"{base}/privkey.pem"

    def deploy(self, settings, reload_marker):
        _certbot_off()
        ops = []
        for cert_name, _ in host.loop(wanted_certificates(settings)):
            given = settings.tls.certificates[cert_name]
            cert, key = self.files(cert_name)
            owed_before_uploads(name=f"{cert_name}: proxy reload owed for new files", marker=reload_marker,
                                uploads=[(given["cert"], cert), (given["key"], key)])
            ops.append(files.put(name=f"{cert_name}: certificate", src=given["cert"], dest=cert,
                                 mode="644", create_remote_dir=True))
            # never shown by --diff, never readable by others, not even while it is written
            ops.append(private_file(name=f"{cert_name}: private key", src=given["key"], dest=key,
                                    **self.key_owner))
        return ops


class FederateRenewals(FactBase):
    """certbot certificates federate obtained (their renewal answers challenges from federate's
    webroot): {"renewed": [...], "parked": [...]} by certificate name."""

    def command(self) -> str:
        webroot = shlex.quote(paths.ACME_WEBROOT)
        return "; ".join(f"echo '# {kind}'; grep -l -F -- {webroot} {folder}/*.conf 2>/dev/null"
                         for kind, folder in (("renewed", LETSENCRYPT_RENEWAL), ("parked", RENEWAL_PARKED))) + "; true"

    @staticmethod
    def default():
        return {"renewed": [], "parked": []}

    def process(self, output):
        state, kind = {"renewed": [], "parked": []}, None
        for line in (line.strip() for line in output):
            if line.startswith("# "):
                kind = line[2:]
            elif line.endswith(".conf") and kind:
                state[kind].append(line.rsplit("/", 1)[1].removesuffix(".conf"))
        return state


@asks(lambda **_: [(FederateRenewals, {})])
@operation()
def renewals(wanted: list[str], retired: list[str], reload_command: str):
    """The certificates of retired homeservers are parked (kept, not renewed); a parked one that is
    needed again comes back and is renewed at once if it is due (it may have expired meanwhile).
    Other certificates, also ones obtained through federate's webroot by hand, are left alone."""
    state = host.get_fact(FederateRenewals)
    for name in (n for n in state["renewed"] if n in retired and n not in wanted):
        yield StringCommand(f"mkdir -p {RENEWAL_PARKED} && mv {LETSENCRYPT_RENEWAL}/{shlex.quote(name)}.conf "
                            f"{RENEWAL_PARKED}/")
    for name in (n for n in state["parked"] if n in wanted):
        yield StringCommand(f"mv {RENEWAL_PARKED}/{shlex.quote(name)}.conf {LETSENCRYPT_RENEWAL}/ && certbot renew "
                            f"--non-interactive --cert-name {shlex.quote(name)} --deploy-hook {shlex.quote(reload_command)}")


def tls_for(settings: HostSettings, acme: type[Certificates], key_owner: dict) -> Certificates:
    """The certificates of a host whose proxy gets ACME certificates with `acme` and reads
    provided keys as `key_owner` ({user, group, mode})."""
    return Provided(key_owner) if settings.tls.mode == "provided" else acme()


@asks(lambda cert_name, **_: [(PathExists, {"path": f"{LETSENCRYPT_LIVE}/{cert_name}/fullchain.pem"})])
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
def certificates(settings: HostSettings, chosen: Certificates, reload_marker: str) -> list:
    """Needs the proxy's port-80 site up first (it serves the ACME challenges).

    Returns the operations whose change means the proxy must reload.
    """
    return chosen.deploy(settings, reload_marker)


def _certbot_off():
    """Without certbot's nginx, its renewals would fail: a host that switched keeps the package
    but not the timer."""
    declared.service(name="certbot renewals off", service="certbot.timer", running=False, enabled=False)
