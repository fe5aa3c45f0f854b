"""Homeservers taken out of the inventory: stopped and disabled, everything they own kept.

A host remembers every homeserver it ran by its config directory. One that is no longer in the
settings is retired: its unit stopped and disabled (so it neither answers nor restarts at boot), and
with workers its workers' target and its Redis too (federate.deploy.workers.retired),
while its config, signing key, secrets, data, database and OS user stay where they are. Its proxy
site goes with the next site run (the proxy writes only the settings' sites) and its certificate
is no longer renewed (federate.deploy.tls). Its admin token file (federate.deploy.admin) is the one
thing removed: a credential for a server that no longer runs is no use to anyone but an intruder,
and the token is made again from the shared secret when the homeserver comes back. Putting it back
into the inventory brings it back as it was: same key, same users, same rooms.
"""

from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import FactBase, deploy

from federate.deploy import paths, workers
from federate.deploy.admin import token_path
from federate.deploy.dumps import DUMPS_ROOT
from federate.pyinfra_ext import declared
from federate.settings import HostSettings, database_name, os_user


class ConfiguredHomeservers(FactBase):
    """Every homeserver the host ran (a homeserver.yaml under the config root): server name -> the
    host names its proxy site answered (the server name's and its public_baseurl's)."""

    def command(self) -> str:
        root = shlex.quote(paths.CONF_ROOT)
        return (f"for f in {root}/*/homeserver.yaml; do [ -f \"$f\" ] && "
                f"echo \"$(basename \"$(dirname \"$f\")\") $(sed -n 's/^public_baseurl: *//p' \"$f\")\"; done; true")

    @staticmethod
    def default():
        return {}

    def process(self, output):
        configured = {}
        for line in (line.split() for line in output if line.strip()):
            name, url = line[0], (line[1:] or [""])[0]
            public_host = url.strip("'\"").split("://", 1)[-1].split("/", 1)[0].split(":")[0]
            configured[name] = tuple(dict.fromkeys(n for n in (name.split(":")[0], public_host) if n))
        return dict(sorted(configured.items()))


def retired_names(settings: HostSettings, configured) -> list[str]:
    wanted = {hs.server_name for hs in settings.homeservers}
    return [name for name in configured if name not in wanted]


def retired_certificates(settings: HostSettings, configured: dict) -> list[str]:
    """Certificate names (a homeserver's proxied host names) only retired homeservers used."""
    wanted = {name for hs in settings.homeservers for name in hs.proxy_names}
    wanted |= {d.server_name for d in settings.delegations}
    return sorted({n for name in retired_names(settings, configured) for n in configured[name]} - wanted)


def kept_and_how_to_delete(settings: HostSettings, name: str, worker_files: set = frozenset()) -> str:
    """Where a retired homeserver's data is, and the commands that delete it on purpose (with its
    workers' and Redis's unit drop-ins when it ran workers: `worker_files`, the WorkerFiles fact's)."""
    database = (f"database {database_name(name)}" if settings.database == "postgres"
                else f"SQLite database in {paths.data_dir(name)}")
    drop = (f" && runuser -u postgres -- dropdb {database_name(name)} && runuser -u postgres -- dropuser "
            f"{database_name(name)}" if settings.database == "postgres" else "")
    units = [paths.unit(name)]
    if worker_files:
        units += [paths.workers_target(name), paths.redis_unit(name),
                  *(paths.worker_unit(name, w) for w in sorted(worker_files - {"redis", "target"}))]
    stopped = "stopped and disabled" + (" (its workers and their Redis too)" if worker_files else "")
    return (f"{name} is not in the inventory any more: {stopped}, no data deleted. Kept: "
            f"{paths.conf_dir(name)} (config, signing key, secrets), {paths.data_dir(name)} (media), {database}, "
            f"OS user {os_user(name)}, dumps in {DUMPS_ROOT}/{name}, its certificate (not renewed); only its admin "
            f"token {token_path(name)} is removed. Put it back into "
            f"the inventory to run it again as it was; to delete it for good (its signing key too, so its server name "
            f"cannot come back with its history): rm -r {paths.conf_dir(name)} {paths.data_dir(name)} "
            f"{DUMPS_ROOT}/{name} {' '.join(f'/etc/systemd/system/{u}.d' for u in units)}{drop} && userdel "
            f"{os_user(name)}")


@deploy("Retired homeservers")
def retire_removed(settings: HostSettings):
    worker_files = host.get_fact(workers.WorkerFiles)
    for name in host.loop(retired_names(settings, host.get_fact(ConfiguredHomeservers))):
        logger.warning(f"[{host.name}] {kept_and_how_to_delete(settings, name, worker_files.get(name, set()))}")
        declared.service(name=f"{name}: retired (stopped and disabled, its data kept)", service=paths.unit(name),
                         running=False, enabled=False)
        declared.file(name=f"{name}: its admin token removed (made again if it comes back)", path=token_path(name),
                      present=False)
        workers.retired(name, worker_files.get(name, set()))
