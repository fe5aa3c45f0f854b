"""Synapse: venv from PyPI, one config + data dir + templated unit per homeserver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.hardware import Ipv4Addrs, Ipv6Addrs
from pyinfra.operations import systemd

from federate.deploy import locks, paths, redis, restore, workers
from federate.deploy.database import database_config, database_ref
from federate.deploy.debian import Release
from federate.deploy.hostscripts import source
from federate.deploy.templating import render
from federate.deploy.users import controller_password, matrix_user
from federate.deploy.venv import (DowngradeVerdict, installed_synapse, is_downgrade, venv_made_beside, venv_made_waited,
                                  venv_matches)
from federate.pyinfra_ext import declared
from federate.pyinfra_ext.files import config_file, file_attributes, generated_once, tree_owned
from federate.pyinfra_ext.owed import changed_or_owed, pending_marker, settled
from federate.settings import Homeserver, HostSettings

PACKAGES = ("python3-venv",)  # Synapse itself comes from PyPI into a venv
SECRET_KEYS = ("registration_shared_secret", "macaroon_secret_key", "form_secret")
VENV_ROOT = paths.VENV.rsplit("/", 1)[0]
REQUIREMENTS = f"{VENV_ROOT}/requirements.txt"  # the lock the venv is installed from (root's, 0644)


def restart_marker(hs: Homeserver) -> str:
    return pending_marker(f"restart-{paths.unit(hs.server_name)}")


def homeserver_config(settings: HostSettings, hs: Homeserver) -> dict[str, Any]:
    """homeserver.yaml as data. Secrets are not here: they live in secrets.yaml on the host."""
    federation = ["federation"] if hs.federation_open else []
    config: dict[str, Any] = {
        "server_name": hs.server_name,
        "public_baseurl": f"https://{hs.public_host}/",
        "serve_server_wellknown": False,  # the proxy serves the well-known files
        "report_stats": False,
        "listeners": [{
            "port": hs.port,
            "bind_addresses": ["127.0.0.1"],
            "type": "http",
            "tls": False,
            "x_forwarded": True,
            "resources": [{"names": ["client", *federation], "compress": False}],
        }, *metrics_listeners(hs)],
        "database": database_config(settings, hs),
        "media_store_path": f"{paths.data_dir(hs.server_name)}/media_store",
        "signing_key_path": paths.signing_key(hs.server_name),
        "enable_registration": False,
        "max_upload_size": settings.max_upload_size,
        **hs.visibility,
    }
    if hs.metrics is not None:
        config["enable_metrics"] = True
    if hs.federation_whitelist is not None:
        config["federation_domain_whitelist"] = list(hs.federation_whitelist)
    if hs.ip_range_whitelist:
        config["ip_range_whitelist"] = list(hs.ip_range_whitelist)
    key_servers = trusted_key_servers(settings, hs)
    if key_servers is not None:
        config["trusted_key_servers"] = key_servers
    if hs.workers.enabled:
        config["listeners"].append(workers.replication_listener(hs))
        config.update(workers.homeserver_config(hs))
    config.update(hs.synapse_extra)
    return config


def metrics_listeners(hs: Homeserver) -> list[dict[str, Any]]:
    """Synapse's Prometheus listener, when metrics are on: plain HTTP on loopback or on a private
    address (the firewall lets only the scrapers reach it there)."""
    if hs.metrics is None:
        return []
    return [{"port": hs.metrics.port, "bind_addresses": [hs.metrics.bind], "type": "metrics", "tls": False}]


def trusted_key_servers(settings: HostSettings, hs: Homeserver) -> list | None:
    """Key servers this homeserver may use. None keeps Synapse's default (matrix.org).

    A federation whitelist blocks key servers that are not on it, so with a whitelist only
    the listed key servers that are also whitelisted remain: key fetches then go straight
    to the origin servers instead of failing against a blocked notary.
    """
    servers = settings.trusted_key_servers
    if hs.federation_whitelist is None:
        return None if servers is None else [dict(s) for s in servers]
    return [dict(s) for s in servers or () if s["server_name"] in hs.federation_whitelist]


def render_homeserver_yaml(settings: HostSettings, hs: Homeserver) -> str:
    header = (f"# Managed by federate for {hs.server_name}: edits are replaced on the next run.\n"
              f"# Secrets are in {paths.secrets_yaml(hs.server_name)} (generated once on this host).\n")
    return header + yaml.safe_dump(homeserver_config(settings, hs), sort_keys=False)


def _secrets_command(venv_python: str) -> str:
    keys = ", ".join(repr(k) for k in SECRET_KEYS)
    script = ("import secrets, yaml, os; "
              f"yaml.safe_dump({{k: secrets.token_urlsafe(48) for k in ({keys},)}}, "
              "open(os.environ['OUT'], 'w'))")
    return f'{venv_python} -c "{script}"'


def downgrade_problem(settings: HostSettings) -> str | None:
    """Why installing an older Synapse would break a database, or None. Checked while planning:
    upgrades and same-version runs cost one fact; only a real downgrade runs the host-side check."""
    installed = installed_synapse(paths.VENV)
    if not is_downgrade(settings.synapse_version, installed):
        return None
    verdict = host.get_fact(DowngradeVerdict, venv=paths.VENV, version=settings.synapse_version,
                            databases=[database_ref(settings, hs) for hs in settings.homeservers],
                            script=source("downgrade_check.py"))
    if verdict.startswith("refused: "):
        return f"host {settings.host}: synapse_version: {verdict[len('refused: '):]} (installed: {installed})"
    return None


def metrics_bind_problem(settings: HostSettings) -> str | None:
    """A metrics listener on a private address the host does not have would keep Synapse from
    starting: refused while planning. Costs a fact only when such a listener is configured."""
    wanted = [(i, hs.metrics.bind) for i, hs in enumerate(settings.homeservers)
              if hs.metrics is not None and not hs.metrics.loopback]
    if not wanted:
        return None
    own = {address for fact in (Ipv4Addrs, Ipv6Addrs) for addresses in (host.get_fact(fact) or {}).values()
           for address in addresses}
    for i, bind in wanted:
        if bind not in own:
            return (f"host {settings.host}: homeservers[{i}].metrics.bind: {bind} is not an address of this host "
                    f"(it has {', '.join(sorted(own)) or 'none'})")
    return None


def venv_requirements(version: str, release: Release, redis: bool = False) -> tuple[str, bool]:
    """(the requirements file for the venv, whether it is a lock): the shipped lock of `version` for
    the release's Python (with Synapse's Redis client when a homeserver runs workers), or, with a
    warning on every run, only the top-level pins."""
    lock = locks.shipped(version, release.python, redis=redis)
    if lock is not None:
        return lock, True
    logger.warning(f"{host.name}: synapse_version {version} has no lock for Python {release.python} (Debian "
                   f"{release.major}): Synapse's dependencies are not pinned, so hosts deployed at different times "
                   f"may run different code. Make the lock on this controller: {locks.regenerate_command(version)} "
                   "(README, 'Pinned dependencies').")
    return locks.unlocked(version, redis), False


@dataclass(frozen=True)
class VenvStarted:
    """What venv_started worked out, for the venv's later steps: the operations' arguments (the
    requirements' pins, whether they are a lock, the restarts a changed venv owes) and the
    background job's operation."""
    wanted: dict
    job: object


@deploy("Synapse")
def venv_started(settings: HostSettings, release: Release) -> VenvStarted:
    """The lock the venv is installed from, and a venv that does not exist yet made in the
    background (venv_made_beside), so it is made while the packages install. Runs once python3-venv
    is installed; what it returns is given to venv_waited and install_synapse."""
    declared.directory(name=f"{VENV_ROOT}: root's", path=VENV_ROOT, user="root", group="root", mode="755")
    requirements, locked = venv_requirements(settings.synapse_version, release, redis=workers.wanted(settings))
    # A new lock alone restarts nothing: only a venv whose packages change does.
    config_file(name=f"{REQUIREMENTS}: what matrix-synapse {settings.synapse_version} is installed from",
                dest=REQUIREMENTS, content=requirements)
    file_attributes(name=f"{REQUIREMENTS} owner and mode", path=REQUIREMENTS, user="root", group="root", mode="644")
    wanted = {"venv": paths.VENV, "requirements": REQUIREMENTS, "locked": locked,
              "wanted": locks.pins(requirements, require_hashes=locked),
              "owes": [*(restart_marker(hs) for hs in settings.homeservers),
                       *(workers.restart_marker(hs) for hs in settings.homeservers if hs.workers.enabled)]}
    job = venv_made_beside(name=f"matrix-synapse {settings.synapse_version} in {paths.VENV}: made in the background, "
                                "beside the packages", **wanted)
    return VenvStarted(wanted, job)


@deploy("Synapse")
def venv_waited(started: VenvStarted):
    venv_made_waited(name="The venv made in the background: waited for", _if=started.job.did_change)


@deploy("Synapse")
def install_synapse(settings: HostSettings, started: VenvStarted):
    # root's; each homeserver owns its own dir in the last two (the venv's: venv_started)
    for root in host.loop([paths.CONF_ROOT, paths.DATA_ROOT]):
        declared.directory(name=f"{root}: root's", path=root, user="root", group="root", mode="755")
    restarts = [restart_marker(hs) for hs in settings.homeservers]
    daemon_reload = pending_marker("systemd-daemon-reload")
    venv = venv_matches(name=f"matrix-synapse {settings.synapse_version} in {paths.VENV}", **started.wanted)
    unit = config_file(name="Templated systemd unit", dest=paths.UNIT_TEMPLATE,
                       content=render("matrix-synapse@.service.j2", paths=paths), owes=[daemon_reload, *restarts])
    declared.directory(name="Unit drop-in dir", path=paths.UNIT_DROPIN_DIR, user="root", group="root", mode="755")
    sandbox = config_file(name="Sandbox of every homeserver (unit drop-in)", dest=paths.SANDBOX_DROPIN,
                          content=render("federate-sandbox.conf.j2", paths=paths, worker=False),
                          owes=[daemon_reload, *restarts])
    identities = {hs.server_name: _own_user(hs, daemon_reload) for hs in host.loop(settings.homeservers)}
    dropins = [paths.UNIT_TEMPLATE, paths.SANDBOX_DROPIN, *map(paths.identity_dropin, identities)]
    for path in host.loop(dropins):
        file_attributes(name=f"{path.removeprefix('/etc/systemd/system/')} owner and mode", path=path,
                        user="root", group="root", mode="644")
    # Workers (only where a homeserver runs them): their units and Redis's, reloaded with the others.
    templates = (workers.unit_templates(daemon_reload) + redis.unit_template(daemon_reload)
                 if workers.wanted(settings) else [])
    worker_units = {hs.server_name: (workers.unit_dropins(hs, daemon_reload), redis.unit_dropin(hs, daemon_reload))
                    for hs in host.loop(settings.homeservers) if hs.workers.enabled}
    systemd.daemon_reload(name="Reload systemd units",
                          _if=changed_or_owed([unit, sandbox, *identities.values(), *templates,
                                               *(op for ops in worker_units.values() for group in ops for op in group)],
                                              daemon_reload))
    settled(name="Unit reload done", marker=daemon_reload)
    on_host = host.get_fact(workers.WorkerFiles)
    for hs in host.loop(settings.homeservers):
        _homeserver(settings, hs, code=[venv], unit=[unit, sandbox, identities[hs.server_name]],
                    worker_units=(templates, *worker_units.get(hs.server_name, ([], []))),
                    on_host=on_host.get(hs.server_name, set()))
    # Every homeserver has moved to its own user and restarted as it: the shared one goes.
    declared.user(name=f"The formerly shared user {paths.LEGACY_USER} removed", user=paths.LEGACY_USER, present=False)


def _own_user(hs: Homeserver, daemon_reload: str):
    """The homeserver's own OS user and the unit drop-in that runs it as that user."""
    name, user = hs.server_name, hs.os_user
    declared.user(name=f"{name}: its own OS user {user}", user=user, system=True, home=paths.data_dir(name),
                  shell="/usr/sbin/nologin", ensure_home=False)
    declared.directory(name=f"{name}: unit drop-in dir", path=paths.identity_dropin(name).rsplit("/", 1)[0],
                       user="root", group="root", mode="755")
    return config_file(name=f"{name}: runs as {user} (unit drop-in)", dest=paths.identity_dropin(name),
                       content=render("federate-user.conf.j2", server_name=name, user=user),
                       owes=[daemon_reload, restart_marker(hs)])


def _homeserver(settings: HostSettings, hs: Homeserver, code: list, unit: list, worker_units: tuple = ([], [], []),
                on_host: set = frozenset()):
    """One homeserver; `code` (the venv's operations) restarts it and its workers when changed, `unit`
    (its systemd unit files) only its main process."""
    name, user = hs.server_name, hs.os_user
    declared.directory(name=f"{name}: config dir", path=paths.conf_dir(name),
                       user=user, group=user, mode="700")
    declared.directory(name=f"{name}: data dir", path=paths.data_dir(name),
                       user=user, group=user, mode="700")
    # A homeserver moved from the shared user (or a file chowned away) gets its data back; the
    # config dir holds only the three files whose owner and mode are repaired one by one below.
    tree_owned(name=f"{name}: everything in {paths.data_dir(name)} owned by {user}", path=paths.data_dir(name),
               user=user, group=user)
    declared.directory(name=f"{name}: media store", path=f"{paths.data_dir(name)}/media_store",
                       user=user, group=user, mode="700")
    restore.restore(settings, hs)  # a homeserver new on this host may come from a backup: before its keys and start
    key = generated_once(name=f"{name}: signing key (made once, never replaced)",
                         path=paths.signing_key(name), user=user,
                         command=f'{paths.VENV}/bin/generate_signing_key -o "$OUT"')
    secret = generated_once(name=f"{name}: secrets (made once, never replaced)",
                            path=paths.secrets_yaml(name), user=user,
                            command=_secrets_command(f"{paths.VENV}/bin/python"))
    for path in host.loop([paths.signing_key(name), paths.secrets_yaml(name)]):
        file_attributes(name=f"{name}: owner and mode of {path.rsplit('/', 1)[1]}", path=path,
                        user=user, group=user, mode="600")
    if on_host:  # workers that are no more stop before the main process restarts without them
        workers.retire_stale(hs, on_host)
    templates, worker_dropins, redis_dropins = worker_units
    if hs.workers.enabled:  # Redis first: the main process and the workers connect to it as they start
        redis.running(hs, [*redis.homeserver_files(hs), *redis_dropins, *templates])
        worker_files = workers.homeserver_files(hs)
    # Synapse's own parser checks the new file before it replaces the old one.
    restart = restart_marker(hs)
    owed = [restart, workers.restart_marker(hs)] if hs.workers.enabled else restart
    config = config_file(name=f"{name}: homeserver.yaml", dest=paths.homeserver_yaml(name), owes=owed,
                         content=render_homeserver_yaml(settings, hs), user=user, group=user, mode="600",
                         check=f"{paths.VENV}/bin/python -m synapse.config --config-path={{path}}"
                               f" --config-path={paths.secrets_yaml(name)} >/dev/null")
    file_attributes(name=f"{name}: homeserver.yaml owner and mode", path=paths.homeserver_yaml(name),
                    user=user, group=user, mode="600")
    declared.service(name=f"{name}: restart on change", service=paths.unit(name), running=True,
                     restarted=True, _if=changed_or_owed([config, key, secret, *code, *unit], restart))
    declared.service(name=f"{name}: running and enabled", service=paths.unit(name),
                     running=True, enabled=True)
    settled(name=f"{name}: restart done", marker=restart)
    if hs.workers.enabled:  # after the main process: they reach it on its replication socket
        # not for the main process's unit files: the workers have their own
        workers.running(hs, [config, key, secret, *code, *templates, *worker_dropins, *worker_files])
    local_url = f"http://127.0.0.1:{hs.port}"
    for user_entry in host.loop(hs.users):
        matrix_user(
            name=f"{name}: user {user_entry.localpart}",
            venv=paths.VENV,
            config_paths=[paths.homeserver_yaml(name), paths.secrets_yaml(name)],
            local_url=local_url,
            database=database_ref(settings, hs),
            user_id=f"@{user_entry.localpart}:{name}",
            localpart=user_entry.localpart,
            password=controller_password(settings.secrets_dir, name, user_entry.localpart),
            admin=user_entry.admin,
        )
