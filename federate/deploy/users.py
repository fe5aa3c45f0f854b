"""Matrix users of a homeserver: passwords made on the controller, accounts made on the host."""

from __future__ import annotations

import secrets
import shlex
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import FactBase, FileUploadCommand, StringCommand, operation

from federate.deploy.paths import UPLOAD_TMP
from federate.pyinfra_ext.factcache import asks
from federate.pyinfra_ext.run import temporary_name

USERS_QUERY = "SELECT name FROM users"


class MatrixUsers(FactBase):
    """The user IDs a homeserver's database holds (`sqlite:PATH` or `postgres:NAME`), read on the host.

    Asked of the database, not of Synapse: an internal homeserver answers profile lookups only to
    signed-in users, and one query serves all of a homeserver's users."""

    def command(self, database: str) -> str:
        kind, _, name = database.partition(":")
        if kind == "postgres":
            return f"su postgres -c {shlex.quote(f'psql -Atc {shlex.quote(USERS_QUERY)} {shlex.quote(name)}')} 2>/dev/null || true"
        script = ("import sqlite3, sys\n"
                  "try:\n"
                  f"    rows = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True).execute({USERS_QUERY!r})\n"
                  "    print('\\n'.join(row[0] for row in rows))\n"
                  "except sqlite3.Error:\n"
                  "    pass\n")
        return f"python3 -c {shlex.quote(script)} {shlex.quote(name)}"

    @staticmethod
    def default():
        return []

    def process(self, output):
        return [line.strip() for line in output if line.strip()]


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


@asks(lambda database, **_: [(MatrixUsers, {"database": database})])
@operation()
def matrix_user(venv: str, config_paths: list[str], local_url: str, database: str, user_id: str,
                localpart: str, password: str, admin: bool):
    """Register a user with Synapse's shared-secret registration unless it exists.

    The password travels as an uploaded file into a root-only directory, never on a
    command line, so it shows in no process list and no pyinfra output.
    """
    if user_id in host.get_fact(MatrixUsers, database=database):
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
