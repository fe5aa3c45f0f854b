"""Synapse workers (README, "Workers"): one unit per worker, grouped under a target per homeserver.

A worker runs as its homeserver's OS user in the main process's sandbox (matrix-synapse-worker@.service
with the same sandbox drop-in), reads the homeserver's homeserver.yaml and secrets.yaml and its own
workers/<worker>.yaml, and reaches the main process's replication listener on a Unix socket in the
homeserver's own data directory (instance_map: main) and the homeserver's own Redis
(federate.deploy.redis). Any change of the homeserver's config, a worker's or the venv stops all its
workers and then starts them together (Synapse requires that of federation senders when
federation_sender_instances changes); an unchanged homeserver's workers are left alone.
"""

from __future__ import annotations

import shlex

import yaml
from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation
from pyinfra.operations import systemd

from federate.deploy import paths, redis
from federate.deploy.templating import render
from federate.pyinfra_ext import declared
from federate.pyinfra_ext.factcache import asks
from federate.pyinfra_ext.files import config_file, file_attributes
from federate.pyinfra_ext.owed import changed_or_owed, pending_marker, settled
from federate.settings import Homeserver, HostSettings

def wanted(settings: HostSettings) -> bool:
    return any(hs.workers.enabled for hs in settings.homeservers)


def restart_marker(hs: Homeserver) -> str:
    return pending_marker(f"restart-{paths.workers_target(hs.server_name)}")


class WorkerFiles(FactBase):
    """server name -> what of its workers is on the host, for every homeserver the host has a config
    dir of (retired ones too): its worker config names (workers/*.yaml), 'redis' when redis.conf is
    there, 'target' when the target's drop-in is. What a run with fewer workers (or none, or a retired
    homeserver) has to stop and take away. One command."""

    def command(self) -> str:
        conf, target = shlex.quote(paths.CONF_ROOT), paths.workers_target_dropin('"$n"')  # $n: each name
        return (f"for d in {conf}/*/; do n=$(basename \"$d\"); for f in \"$d\"workers/*.yaml; do [ -f \"$f\" ] && "
                f"echo \"$n\" \"$(basename \"$f\" .yaml)\"; done; [ -f \"$d\"redis.conf ] && echo \"$n\" redis; "
                f"[ -f {target} ] && echo \"$n\" target; done; true")

    @staticmethod
    def default():
        return {}

    def process(self, output):
        found: dict[str, set] = {}
        for line in output:
            words = line.split()
            if len(words) == 2:
                found.setdefault(words[0], set()).add(words[1])
        return found


def homeserver_config(hs: Homeserver) -> dict:
    """What homeserver.yaml gets for workers (nothing without them)."""
    w = hs.workers
    if not w.enabled:
        return {}
    name = hs.server_name
    instances = {"main": paths.replication_socket(name),
                 **{writer: paths.worker_replication_socket(name, writer)
                    for writers in w.writers.values() for writer in writers}}
    config = {
        "instance_map": {instance: {"path": socket} for instance, socket in instances.items()},
        "redis": redis.synapse_config(hs),
        "worker_replication_secret_path": paths.replication_secret(name),
    }
    if w.senders:
        config["federation_sender_instances"] = list(w.senders)
    if w.writers:
        config["stream_writers"] = w.writers
    if w.pusher_names:
        config["pusher_instances"] = list(w.pusher_names)
    if w.background_names:
        config["run_background_tasks_on"] = w.background_names[0]
    media = w.of_kind("media")
    if media:  # the main process stops serving media and running its jobs; the first media worker runs them
        config["enable_media_repo"] = False
        config["media_instance_running_background_jobs"] = media[0][0]
    return config


def replication_listener(hs: Homeserver, worker: str | None = None) -> dict:
    """A replication listener (the main process's, or a stream writer's): a Unix socket only the
    homeserver's OS user can reach."""
    socket = paths.replication_socket(hs.server_name) if worker is None \
        else paths.worker_replication_socket(hs.server_name, worker)
    return {"path": socket, "mode": 0o600, "type": "http", "resources": [{"names": ["replication"]}]}


# What each kind of listening worker serves the proxy (its listener's resource); stream writers: client.
RESOURCES = {"federation": "federation", "client": "client", "media": "media"}


def worker_config(hs: Homeserver, worker: str) -> dict:
    listening = {name: kind for kind, name, _ in hs.workers.listening}
    kind = listening.get(worker)
    app = "synapse.app.media_repository" if kind == "media" else "synapse.app.generic_worker"
    config: dict = {"worker_app": app, "worker_name": worker}
    if kind is not None:  # the proxy sends it requests on loopback
        port = dict((name, port) for _, name, port in hs.workers.listening)[worker]
        config["worker_listeners"] = [{"type": "http", "port": port, "bind_addresses": ["127.0.0.1"],
                                       "x_forwarded": True, "resources": [{"names": [RESOURCES.get(kind, "client")]}]}]
    if kind in hs.workers.writers:  # a stream writer: the others reach it on its own replication socket
        config["worker_listeners"].append(replication_listener(hs, worker))
    port = dict(hs.workers.sender_metrics).get(worker)
    if port is not None:  # with metrics on: the federation queue lives in the sender, read here
        config["worker_listeners"] = [{"type": "metrics", "port": port, "bind_addresses": ["127.0.0.1"],
                                       "tls": False}]
    return config


def metrics_urls(hs: Homeserver) -> list[str]:
    """Where the host reads the federation queue with metrics on: each sender's listener, or the main
    process's when it sends itself; none with metrics off."""
    if hs.metrics is None:
        return []
    if hs.workers.senders:
        return [f"http://127.0.0.1:{port}/_synapse/metrics" for _, port in hs.workers.sender_metrics]
    return [hs.metrics.url]


def render_worker_yaml(hs: Homeserver, worker: str) -> str:
    return (f"# Managed by federate: the worker {worker} of {hs.server_name}; edits are replaced on the next run.\n"
            + yaml.safe_dump(worker_config(hs, worker), sort_keys=False))


def render_worker_dropin(hs: Homeserver, worker: str) -> str:
    name = hs.server_name
    return render("federate-worker.conf.j2", paths=paths, worker=worker, server_name=name, user=hs.os_user,
                  target=paths.workers_target(name), main_unit=paths.unit(name), redis_unit=paths.redis_unit(name),
                  conf_dir=paths.conf_dir(name), data_dir=paths.data_dir(name),
                  worker_yaml=paths.worker_yaml(name, worker))


def render_target_dropin(hs: Homeserver) -> str:
    name = hs.server_name
    return render("federate-workers.conf.j2", server_name=name, main_unit=paths.unit(name),
                  units=[paths.worker_unit(name, w) for w in hs.workers.names])


def unit_templates(daemon_reload: str) -> list:
    """The worker unit and target templates with the main process's sandbox; the ops whose change needs
    a daemon reload."""
    ops = [config_file(name="Worker unit template", dest=paths.WORKER_UNIT_TEMPLATE, owes=daemon_reload,
                       content=render("matrix-synapse-worker@.service.j2")),
           config_file(name="Worker target template", dest=paths.WORKERS_TARGET_TEMPLATE, owes=daemon_reload,
                       content=render("matrix-synapse-workers@.target.j2"))]
    declared.directory(name="Worker unit drop-in dir", path=paths.WORKER_SANDBOX_DROPIN.rsplit("/", 1)[0],
                    user="root", group="root", mode="755")
    ops.append(config_file(name="Sandbox of every worker (unit drop-in)", dest=paths.WORKER_SANDBOX_DROPIN,
                           owes=daemon_reload, content=render("federate-sandbox.conf.j2", paths=paths, worker=True)))
    for path in host.loop([paths.WORKER_UNIT_TEMPLATE, paths.WORKERS_TARGET_TEMPLATE, paths.WORKER_SANDBOX_DROPIN]):
        file_attributes(name=f"{path.removeprefix('/etc/systemd/system/')} owner and mode", path=path,
                        user="root", group="root", mode="644")
    return ops


def unit_dropins(hs: Homeserver, daemon_reload: str) -> list:
    """Each worker's unit drop-in and the target's; the ops (for the daemon reload and the restart)."""
    name, marker = hs.server_name, restart_marker(hs)
    units = []
    for worker in host.loop(hs.workers.names):
        dropin = paths.worker_dropin(name, worker)
        declared.directory(name=f"{name}: {worker} unit drop-in dir", path=dropin.rsplit("/", 1)[0],
                        user="root", group="root", mode="755")
        units.append(config_file(name=f"{name}: {worker} unit drop-in", dest=dropin,
                                 content=render_worker_dropin(hs, worker), owes=[daemon_reload, marker]))
        file_attributes(name=f"{name}: {worker} unit drop-in owner and mode", path=dropin,
                        user="root", group="root", mode="644")
    target = paths.workers_target_dropin(name)
    declared.directory(name=f"{name}: workers target drop-in dir", path=target.rsplit("/", 1)[0],
                    user="root", group="root", mode="755")
    units.append(config_file(name=f"{name}: workers target drop-in", dest=target, content=render_target_dropin(hs),
                             owes=[daemon_reload, marker]))
    file_attributes(name=f"{name}: workers target drop-in owner and mode", path=target,
                    user="root", group="root", mode="644")
    return units


def homeserver_files(hs: Homeserver) -> list:
    """The replication secret (made once) and each worker's config; the ops (for the workers' restart)."""
    name, user, marker = hs.server_name, hs.os_user, restart_marker(hs)
    made = redis.random_secret(hs, "worker replication secret", paths.replication_secret(name))
    declared.directory(name=f"{name}: workers config dir", path=paths.workers_dir(name), user=user, group=user,
                    mode="700")
    configs = [made]
    for worker in host.loop(hs.workers.names):
        path = paths.worker_yaml(name, worker)
        configs.append(config_file(name=f"{name}: {worker}.yaml", dest=path, owes=marker,
                                   content=render_worker_yaml(hs, worker), user=user, group=user, mode="600"))
        file_attributes(name=f"{name}: {worker}.yaml owner and mode", path=path, user=user, group=user, mode="600")
    return configs


class UnitActive(FactBase):
    """`systemctl is-active` of one unit: true when active. (pyinfra's SystemdStatus takes a target's
    sub-state 'active' for stopped.)"""

    def command(self, unit: str) -> str:
        return f"systemctl is-active {shlex.quote(unit)} || true"

    def process(self, output):
        return "".join(output).strip() == "active"


@asks(lambda target, **_: [(UnitActive, {"unit": target})])
@operation()
def target_active(target: str, active: bool = True):
    """A target started (or stopped), by its `systemctl is-active`."""
    if host.get_fact(UnitActive, unit=target) != active:
        yield StringCommand(f"systemctl {'start' if active else 'stop'} {shlex.quote(target)}")


@operation()
def stopped_then_started(units: list[str], target: str):
    """All of `units` stopped, then `target` started (which starts them together)."""
    yield StringCommand("systemctl stop " + " ".join(shlex.quote(u) for u in units))
    yield StringCommand(f"systemctl start {shlex.quote(target)}")


def running(hs: Homeserver, changed: list):
    """The homeserver's workers restarted together when anything they read changed, then running."""
    name, marker, target = hs.server_name, restart_marker(hs), paths.workers_target(hs.server_name)
    units = [paths.worker_unit(name, w) for w in hs.workers.names]
    stopped_then_started(name=f"{name}: all workers stopped, then started together (on change)", units=units,
                         target=target, _if=changed_or_owed(changed, marker))
    # running=None: pyinfra takes an active target for stopped (target_active checks it instead)
    declared.service(name=f"{name}: workers target enabled", service=target, running=None, enabled=True)
    target_active(name=f"{name}: workers target started", target=target)
    for unit in host.loop(units):
        declared.service(name=f"{name}: {unit} running", service=unit, running=True)
    settled(name=f"{name}: workers restart done", marker=marker)


def retire_stale(hs: Homeserver, on_host: set):
    """Workers the settings no longer have (fewer, or none): stopped, their drop-ins gone and systemd
    reloaded (so no unit is left 'changed on disk'), then their configs gone; with none left, the
    target and the homeserver's Redis too. Nothing of the homeserver's data. A run cut before the
    reload leaves the configs, so the next one reloads again."""
    name = hs.server_name
    stale = sorted(on_host - {"redis", "target"} - set(hs.workers.names))
    for worker in host.loop(stale):
        declared.service(name=f"{name}: worker {worker} stopped (not in the settings)",
                         service=paths.worker_unit(name, worker), running=False)
        declared.directory(name=f"{name}: {worker} unit drop-in removed",
                           path=paths.worker_dropin(name, worker).rsplit("/", 1)[0], present=False)
    all_off = not hs.workers.enabled and bool(on_host)
    if all_off:
        stopped(name, "no workers")
        declared.directory(name=f"{name}: workers target drop-in removed",
                           path=paths.workers_target_dropin(name).rsplit("/", 1)[0], present=False)
        declared.file(name=f"{name}: Redis unit drop-in removed (no workers)", path=paths.redis_dropin(name),
                      present=False)
    if stale or all_off:
        systemd.daemon_reload(name=f"{name}: systemd reloaded (worker units removed)")
    for worker in host.loop(stale):
        declared.file(name=f"{name}: {worker}.yaml removed", path=paths.worker_yaml(name, worker), present=False)
    if all_off and "redis" in on_host:
        redis.files_removed(name)


def stopped(name: str, why: str):
    """A homeserver's workers target and every worker stopped, the target disabled (no start at boot),
    its Redis stopped and disabled."""
    target = paths.workers_target(name)
    target_active(name=f"{name}: workers target stopped ({why})", target=target, active=False)
    declared.service(name=f"{name}: workers target disabled ({why})", service=target, running=None, enabled=False)
    redis.stopped(name, why)


def retired(name: str, on_host: set):
    """A homeserver out of the inventory: its workers and Redis stopped and disabled like its main
    process, every file kept (it comes back as it was)."""
    if on_host:
        stopped(name, "retired")
