"""Inventories, loaded the one way pyinfra loads them, and their validated settings.

The deploy gets its inventory from pyinfra's CLI; `federate verify` and `federate prove` load
the same file with pyinfra's own loader (`pyinfra_cli.inventory.make_inventory`): group data
from `group_data/` in the working directory and beside the inventory, with pyinfra's
precedence (host data over group data over `all`). The library's defaults fill what is left.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyinfra import logger
from pyinfra.api import Inventory

from federate.settings import HostSettings, SettingsError, inventory_settings

_cache: dict[int, dict[str, HostSettings]] = {}


def load_inventory(path: str | Path) -> Inventory:
    """A pyinfra inventory file loaded by pyinfra's own code, as `pyinfra PATH ...` run here would."""
    from pyinfra.api import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory  # pyinfra's CLI package ships with pyinfra

    if not Path(path).is_file():
        raise FileNotFoundError(f"no inventory file {path}")
    with ctx_state.use(State()):  # pyinfra's loader records the file it executes in a state
        return make_inventory(str(path), cwd=os.getcwd())


def host_data(inventory: Inventory) -> list[tuple[str, dict]]:
    """(host name, its data with group data merged) for every host, in inventory order."""
    return [(h.name, h.data.dict()) for h in inventory]


def load_settings(path: str | Path) -> dict[str, HostSettings]:
    """Validated settings of every host of an inventory file (SettingsError names host and field)."""
    return inventory_settings(host_data(load_inventory(path)), base_dir=Path(path).resolve().parent)


def settings_for(inventory, host) -> HostSettings:
    """This host's settings in a pyinfra run. The first call validates every host of the inventory,
    so one bad host stops the whole run before any operation is planned on any host."""
    key = id(inventory)
    if key not in _cache:
        try:
            _cache[key] = inventory_settings(host_data(inventory), base_dir=_cli_inventory_dir())
        except SettingsError as error:
            refuse(f"invalid settings: {error}")
    return _cache[key][host.name]


def _cli_inventory_dir() -> Path:
    """The folder of the inventory file the pyinfra CLI was given (relative paths in settings are
    relative to it), else the working directory (pyinfra's API, an inventory that is no file).

    pyinfra keeps no record of the file, so the command line is parsed again with pyinfra's own
    CLI definition (no callbacks run)."""
    if Path(sys.argv[0]).name == "pyinfra" or sys.argv[0].endswith("pyinfra/__main__.py"):
        from pyinfra_cli.cli import cli

        try:
            given = cli.make_context("pyinfra", sys.argv[1:], resilient_parsing=True).params.get("inventory")
        except Exception:  # a command line pyinfra itself accepted; fall back rather than fail the run
            given = None
        if given and Path(given).is_file():
            return Path(given).resolve().parent
    return Path.cwd()


def refuse(message: str):
    """Stop the whole run before any operation executes, with one clear line and no traceback."""
    logger.error(f"federate: {message}")
    sys.exit(2)
