"""Settings for the hosts of a pyinfra inventory, validated all at once before any change."""

from __future__ import annotations

import sys

from pyinfra import logger

from federate.settings import HostSettings, SettingsError, inventory_settings

_cache: dict[int, dict[str, HostSettings]] = {}


def settings_for(inventory, host) -> HostSettings:
    """This host's settings. The first call validates every host of the inventory, so one bad
    host stops the whole run before any operation is planned on any host."""
    key = id(inventory)
    if key not in _cache:
        try:
            _cache[key] = inventory_settings((h.name, h.data.dict()) for h in inventory)
        except SettingsError as error:
            refuse(f"invalid settings: {error}")
    return _cache[key][host.name]


def refuse(message: str):
    """Stop the whole run before any operation executes, with one clear line and no traceback."""
    logger.error(f"federate: {message}")
    sys.exit(2)
