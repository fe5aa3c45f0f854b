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
            logger.error(f"federate: invalid settings: {error}")
            sys.exit(2)
    return _cache[key][host.name]
