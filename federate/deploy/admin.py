"""A federate admin account per homeserver, for `federate destinations` (Synapse's admin API).

Its access token is made on the host, once, into a root-only file outside the homeserver's own
config dir (which its OS user owns): never printed, never copied to the controller. The command
reads it on the host over the deploy's SSH and talks to Synapse only on the loopback listener.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy

from federate.deploy import paths
from federate.deploy.hostscripts import source
from federate.pyinfra_ext import declared
from federate.pyinfra_ext.files import file_attributes, generated_once
from federate.settings import Homeserver, HostSettings

TOKEN_ROOT = "/etc/federate/admin"
LOCALPART = "federate-admin"


def token_path(server_name: str) -> str:
    return f"{TOKEN_ROOT}/{server_name}.token"


def token_command(hs: Homeserver) -> str:
    """Writes the token to $OUT; the password is derived on the host and is on no command line."""
    return (f"{paths.VENV}/bin/python -c {shlex.quote(source('admin_token.py'))} "
            f"{shlex.quote(paths.secrets_yaml(hs.server_name))} {hs.port}")


@deploy("Admin tokens")
def admin_tokens(settings: HostSettings):
    declared.directory(name=f"{TOKEN_ROOT}: root's only", path=TOKEN_ROOT, user="root", group="root", mode="700")
    for hs in host.loop(settings.homeservers):
        path = token_path(hs.server_name)
        generated_once(name=f"{hs.server_name}: admin token of @{LOCALPART} (made once, never printed)",
                       path=path, user="root", command=token_command(hs))
        file_attributes(name=f"{hs.server_name}: owner and mode of its admin token", path=path,
                        user="root", group="root", mode="600")
