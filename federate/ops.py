"""Small custom pyinfra operations and facts that no built-in operation covers.

Each operation checks the host first and yields nothing when it is already right,
so a converged host reports zero changes.
"""

from __future__ import annotations

import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase, FileUploadCommand, StringCommand, operation

from federate.paths import UPLOAD_TMP


class PathExists(FactBase):
    """Whether anything exists at a path, following symlinks (certbot's live/ files are links)."""

    def command(self, path: str) -> str:
        return f"test -e {shlex.quote(path)} && echo yes || echo no"

    def process(self, output):
        return "".join(output).strip() == "yes"


class HttpStatus(FactBase):
    """HTTP status of a GET on the host itself (None when nothing answers)."""

    def command(self, url: str) -> str:
        script = (
            "import sys, urllib.request, urllib.error\n"
            "try:\n"
            f"    print(urllib.request.urlopen({url!r}, timeout=5).status)\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code)\n"
            "except Exception:\n"
            "    print('none')\n"
        )
        return f"python3 -c {shlex.quote(script)}"

    def process(self, output):
        value = "".join(output).strip()
        return int(value) if value.isdigit() else None


@operation()
def generated_once(path: str, command: str, user: str, mode: str = "600"):
    """Create `path` by running `command` (which writes to $OUT) unless it already exists.

    Used for signing keys and secrets: never overwritten once made. The file is written to a
    temporary name, given its owner and mode, then renamed, so a half-written key never exists.
    """
    if host.get_fact(PathExists, path=path):
        host.noop(f"{path} exists and is kept")
        return
    tmp = f"{path}.new"
    yield StringCommand(
        f"umask 077 && export OUT={shlex.quote(tmp)} && {command}"
        f" && chown {user}:{user} {shlex.quote(tmp)} && chmod {mode} {shlex.quote(tmp)}"
        f" && mv -f {shlex.quote(tmp)} {shlex.quote(path)}"
    )


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
    secret_file = f"{UPLOAD_TMP}/{localpart}.password"
    yield StringCommand(f"install -d -m 700 {UPLOAD_TMP}")
    yield FileUploadCommand(StringIO(password), secret_file)
    configs = " ".join(f"-c {shlex.quote(p)}" for p in config_paths)
    yield StringCommand(
        f"{venv}/bin/register_new_matrix_user {configs} --exists-ok -u {shlex.quote(localpart)}"
        f" --password-file {secret_file} {'--admin' if admin else '--no-admin'} {local_url};"
        f" status=$?; rm -f {secret_file}; exit $status"
    )
