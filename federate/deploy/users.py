"""Matrix users of a homeserver: passwords made on the controller, accounts made on the host."""

from __future__ import annotations

import secrets
import shlex
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import FileUploadCommand, StringCommand, operation

from federate.deploy.paths import UPLOAD_TMP
from federate.pyinfra_ext.facts import HttpStatus
from federate.pyinfra_ext.run import temporary_name


def controller_password(secrets_dir: str, server_name: str, localpart: str) -> str:
    """A user's password: generated once, kept only on the controller, mode 0600."""
    folder = Path(secrets_dir) / server_name
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.parent.chmod(0o700)
    path = folder / f"{localpart}.password"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text().strip()


@operation()
def matrix_user(venv: str, config_paths: list[str], local_url: str, user_id: str,
                localpart: str, password: str, admin: bool):
    """Register a user with Synapse's shared-secret registration unless it exists.

    The password travels as an uploaded file into a root-only directory, never on a
    command line, so it shows in no process list and no pyinfra output.
    """
    profile_url = f"{local_url}/_matrix/client/v3/profile/{user_id.replace('@', '%40').replace(':', '%3A')}"
    if host.get_fact(HttpStatus, url=profile_url) == 200:
        host.noop(f"user {user_id} exists")
        return
    secret_file = temporary_name(f"{UPLOAD_TMP}/{localpart}.password")
    yield StringCommand(f"install -d -m 700 {UPLOAD_TMP}")
    yield FileUploadCommand(StringIO(password), secret_file)
    configs = " ".join(f"-c {shlex.quote(p)}" for p in config_paths)
    yield StringCommand(
        f"{venv}/bin/register_new_matrix_user {configs} --exists-ok -u {shlex.quote(localpart)}"
        f" --password-file {secret_file} {'--admin' if admin else '--no-admin'} {local_url};"
        f" status=$?; rm -f {secret_file}; exit $status"
    )
