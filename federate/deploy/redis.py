"""Redis for Synapse workers' replication: one Redis per homeserver with workers, never on the network.

Debian's redis-server package provides the binary only: its own instance (127.0.0.1:6379) is masked
before the package is installed, so it never listens. Each homeserver with workers gets
federate-redis@<server_name>.service, run as the homeserver's own OS user with no network
(PrivateNetwork), on a Unix socket in /run/federate-redis/<server_name> (mode 0700, that user's).
Its one user needs a password generated once on the host (redis.password, 0600, the homeserver's
user's; Synapse reads it with redis.password_path) and may use only this homeserver's channels and
Synapse's cache keys (redis.acl: the password's SHA-256, written on the host, never shown).
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation

from federate.deploy import paths
from federate.deploy.templating import render
from federate.pyinfra_ext import declared
from federate.pyinfra_ext.factcache import asks
from federate.pyinfra_ext.files import config_file, file_attributes, generated_once
from federate.pyinfra_ext.owed import changed_or_owed, owe, pending_marker, settled
from federate.settings import Homeserver, HostSettings

PACKAGES = ("redis-server",)  # Debian 12 and 13 alike
REDIS_SERVER = "/usr/bin/redis-server"
DEBIAN_UNIT = "/etc/systemd/system/redis-server.service"  # masked: Debian's own instance listens on TCP
# What Synapse does with Redis: publish and subscribe on channels named after the server name, and
# keep its external cache under cache_v1:. Nothing of the server's administration.
COMMANDS = "+@all -@dangerous -@admin"
PASSWORD_COMMAND = "python3 -c \"import os, secrets; open(os.environ['OUT'], 'w').write(secrets.token_urlsafe(48))\""


def wanted(settings: HostSettings) -> bool:
    return any(hs.workers.enabled for hs in settings.homeservers)


def packages(settings: HostSettings) -> tuple[str, ...]:
    return PACKAGES if wanted(settings) else ()


def acl_rules(hs: Homeserver) -> str:
    """The rules of the homeserver's Redis user after its password: its channels and keys only."""
    return f"resetchannels &{hs.server_name} &{hs.server_name}/* resetkeys ~cache_v1:* {COMMANDS}"


def restart_marker(hs: Homeserver) -> str:
    return pending_marker(f"restart-{paths.redis_unit(hs.server_name)}")


def render_redis_conf(hs: Homeserver) -> str:
    name = hs.server_name
    return render("redis.conf.j2", server_name=name, socket=paths.redis_socket(name), acl=paths.redis_acl(name),
                  run_dir=paths.redis_socket(name).rsplit("/", 1)[0])


def synapse_config(hs: Homeserver) -> dict:
    """homeserver.yaml's redis section."""
    return {"enabled": True, "path": paths.redis_socket(hs.server_name),
            "password_path": paths.redis_password(hs.server_name)}


class AclCurrent(FactBase):
    """True when the ACL file holds the password's hash and these rules (the password is never printed)."""

    def command(self, password: str, acl: str, rules: str) -> str:
        p, a = shlex.quote(password), shlex.quote(acl)
        return (f"if [ -f {p} ] && [ -f {a} ] && [ \"$(cat {a})\" = \"user default on #$(sha256sum < {p} | "
                f"cut -d' ' -f1) \"{shlex.quote(rules)} ]; then echo yes; else echo no; fi")

    def process(self, output):
        return "".join(output).strip() == "yes"


@asks(lambda password, acl, rules, **_: [(AclCurrent, {"password": password, "acl": acl, "rules": rules})])
@operation()
def acl_file(password: str, acl: str, rules: str, user: str, owes: str):
    """redis.acl from the password on the host: written when the password or the rules changed."""
    if host.get_fact(AclCurrent, password=password, acl=acl, rules=rules):
        return
    yield from owe(owes)
    tmp = shlex.quote(f"{acl}.federate-new")
    yield StringCommand(f"umask 077 && printf 'user default on #%s %s\\n' \"$(sha256sum < {shlex.quote(password)} | "
                        f"cut -d' ' -f1)\" {shlex.quote(rules)} > {tmp} && chown {user}:{user} {tmp} && "
                        f"mv -f {tmp} {shlex.quote(acl)}")


def mask_debian_instance():
    """Before the package is installed: its own instance would listen on 127.0.0.1:6379."""
    declared.link(name="Debian's own Redis instance masked (federate runs one per homeserver, on a socket)",
               path=DEBIAN_UNIT, target="/dev/null")


def unit_template(daemon_reload: str) -> list:
    """The Redis unit template; the ops whose change needs a daemon reload."""
    unit = config_file(name="Redis unit template", dest=paths.REDIS_UNIT_TEMPLATE, owes=daemon_reload,
                       content=render("federate-redis@.service.j2", paths=paths, redis_server=REDIS_SERVER))
    file_attributes(name="Redis unit template owner and mode", path=paths.REDIS_UNIT_TEMPLATE,
                    user="root", group="root", mode="644")
    return [unit]


def unit_dropin(hs: Homeserver, daemon_reload: str) -> list:
    """The drop-in that runs the homeserver's Redis as its OS user; the ops (for the daemon reload)."""
    name, user = hs.server_name, hs.os_user
    declared.directory(name=f"{name}: Redis unit drop-in dir", path=paths.redis_dropin(name).rsplit("/", 1)[0],
                    user="root", group="root", mode="755")
    dropin = config_file(name=f"{name}: Redis runs as {user} (unit drop-in)", dest=paths.redis_dropin(name),
                         content=render("federate-user.conf.j2", server_name=name, user=user),
                         owes=[daemon_reload, restart_marker(hs)])
    file_attributes(name=f"{name}: Redis drop-in owner and mode", path=paths.redis_dropin(name),
                    user="root", group="root", mode="644")
    return [dropin]


def random_secret(hs: Homeserver, what: str, path: str):
    """A random secret in `path`, made once on the host (never replaced, never shown), 0600 the
    homeserver's user's; the operation that made it."""
    user = hs.os_user
    made = generated_once(name=f"{hs.server_name}: {what} (made once, never replaced)", path=path, user=user,
                          command=PASSWORD_COMMAND)
    file_attributes(name=f"{hs.server_name}: owner and mode of {path.rsplit('/', 1)[1]}", path=path,
                    user=user, group=user, mode="600")
    return made


def homeserver_files(hs: Homeserver) -> list:
    """The homeserver's Redis password (made once), ACL and config; the ops (for its restart)."""
    name, user, marker = hs.server_name, hs.os_user, restart_marker(hs)
    password = random_secret(hs, "Redis password", paths.redis_password(name))
    acl = acl_file(name=f"{name}: Redis ACL (its channels and cache keys only)", password=paths.redis_password(name),
                   acl=paths.redis_acl(name), rules=acl_rules(hs), user=user, owes=marker)
    conf = config_file(name=f"{name}: redis.conf", dest=paths.redis_conf(name), content=render_redis_conf(hs),
                       user=user, group=user, mode="600", owes=marker)
    for path in host.loop([paths.redis_acl(name), paths.redis_conf(name)]):
        file_attributes(name=f"{name}: owner and mode of {path.rsplit('/', 1)[1]}", path=path,
                        user=user, group=user, mode="600")
    return [password, acl, conf]


def running(hs: Homeserver, changed: list):
    """Restarted when its files changed (or a cut run owes it), running and enabled."""
    unit, marker = paths.redis_unit(hs.server_name), restart_marker(hs)
    restart = declared.service(name=f"{hs.server_name}: Redis restart on change", service=unit, running=True,
                              restarted=True, _if=changed_or_owed(changed, marker))
    declared.service(name=f"{hs.server_name}: Redis running and enabled", service=unit, running=True, enabled=True)
    settled(name=f"{hs.server_name}: Redis restart done", marker=marker)
    return restart


def stopped(name: str, why: str):
    """The homeserver's Redis stopped and not started at boot."""
    declared.service(name=f"{name}: Redis stopped and disabled ({why})", service=paths.redis_unit(name),
                     running=False, enabled=False)


def files_removed(name: str):
    """A homeserver whose workers are off: its Redis files gone but the password (kept for the next time)."""
    for what, path in host.loop([("redis.conf", paths.redis_conf(name)), ("redis.acl", paths.redis_acl(name))]):
        declared.file(name=f"{name}: {what} removed (no workers)", path=path, present=False)
