"""Homeservers taken out of the inventory: stopped and disabled, everything they own kept.

A host remembers every homeserver it ran by its config directory. One that is no longer in the
settings is retired: its unit stopped and disabled (so it neither answers nor restarts at boot),
while its config, signing key, secrets, data, database and OS user stay where they are. Its proxy
site goes with the next site run (the proxy writes only the settings' sites) and its certificate
is no longer renewed (federate.deploy.tls). Putting it back into the inventory brings it back as
it was: same key, same users, same rooms.
"""

from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import FactBase, deploy
from pyinfra.operations import systemd

from federate.deploy import paths
from federate.settings import HostSettings, database_name, os_user


class ConfiguredHomeservers(FactBase):
    """Server names with a homeserver.yaml under the config root: every homeserver the host ran."""

    def command(self) -> str:
        root = shlex.quote(paths.CONF_ROOT)
        return f"for f in {root}/*/homeserver.yaml; do [ -f \"$f\" ] && basename \"$(dirname \"$f\")\"; done; true"

    @staticmethod
    def default():
        return []

    def process(self, output):
        return sorted(line.strip() for line in output if line.strip())


def retired_names(settings: HostSettings, configured: list[str]) -> list[str]:
    wanted = {hs.server_name for hs in settings.homeservers}
    return [name for name in configured if name not in wanted]


def kept_and_how_to_delete(settings: HostSettings, name: str) -> str:
    """Where a retired homeserver's data is, and the commands that delete it on purpose."""
    database = (f"database {database_name(name)}" if settings.database == "postgres"
                else f"SQLite database in {paths.data_dir(name)}")
    drop = f" && runuser -u postgres -- dropdb {database_name(name)}" if settings.database == "postgres" else ""
    return (f"{name} is not in the inventory any more: stopped and disabled, nothing deleted. Kept: "
            f"{paths.conf_dir(name)} (config, signing key, secrets), {paths.data_dir(name)} (media), {database}, "
            f"OS user {os_user(name)}. Put it back into the inventory to run it again as it was; to delete it for "
            f"good (its signing key too, so its server name cannot come back with its history): "
            f"rm -r {paths.conf_dir(name)} {paths.data_dir(name)}{drop} && userdel {os_user(name)}")


@deploy("Retired homeservers")
def retire_removed(settings: HostSettings):
    for name in host.loop(retired_names(settings, host.get_fact(ConfiguredHomeservers))):
        logger.warning(f"[{host.name}] {kept_and_how_to_delete(settings, name)}")
        systemd.service(name=f"{name}: retired (stopped and disabled, its data kept)", service=paths.unit(name),
                        running=False, enabled=False)
