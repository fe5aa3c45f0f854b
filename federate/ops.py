"""Small custom pyinfra operations and facts that no built-in operation covers.

Each operation checks the host first and yields nothing when it is already right,
so a converged host reports zero changes.
"""

from __future__ import annotations

import hashlib
import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase, FileUploadCommand, StringCommand, operation
from pyinfra.api.util import get_file_sha1
from pyinfra.facts.files import File, Sha1File

from federate.paths import UPLOAD_TMP


PENDING_DIR = "/var/lib/federate/pending"


def pending_marker(action: str) -> str:
    """A file that says `action` (a restart, a reload) is owed: written before the change that
    needs it, removed after it ran, so a run cut in between is finished by the next one."""
    return f"{PENDING_DIR}/{action}"


def _owe(markers) -> list[StringCommand]:
    markers = [markers] if isinstance(markers, str) else list(markers or ())
    if not markers:
        return []
    return [StringCommand(f"mkdir -p {PENDING_DIR} && touch " + " ".join(shlex.quote(m) for m in markers))]


@operation()
def owed_before_uploads(uploads: list[tuple[str, str]], marker: str):
    """Owe `marker` before any of `uploads` (local path, remote path) replaces a file, so a run cut
    between the upload and the reload it needs still reloads on the next run."""
    for local, remote in uploads:
        # compared the way files.put compares (sha1), so both agree on what will change
        if host.get_fact(Sha1File, path=remote) != get_file_sha1(local):
            yield from _owe(marker)
            return


def changed_or_owed(ops: list, marker: str):
    """An `_if` condition: one of `ops` changed something, or an earlier run left `marker`."""
    def condition() -> bool:
        return any(op.did_change() for op in ops) or host.get_fact(PathExists, path=marker)
    return condition


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
def config_file(dest: str, content: str, user: str = "root", group: str = "root", mode: str = "644",
                check: str | None = None, check_in_place: bool = False, owes: str | list[str] = ()):
    """Write a text file's content atomically, checked before it can go live.

    The content goes to a temporary file beside `dest` (with the wanted owner and mode) and is
    renamed over it, so an interrupted run leaves the old file or the new one, never half of one.
    `check` (with {path}) validates the temporary file; with `check_in_place` it runs after the
    rename (for checkers such as `nginx -t` that read a whole config tree) and the previous file
    is put back when it fails. Only a content change counts here, so services restart only for
    that; `file_attributes` repairs owner and mode drift. `owes` names the pending markers
    written before the new file goes live (see `pending_marker`).
    """
    # None when the file is missing; one remote command either way (pyinfra caches no facts)
    if host.get_fact(Sha1File, path=dest) != hashlib.sha1(content.encode()).hexdigest():
        yield from _replace_file(dest, content, user, group, mode, check, check_in_place, owes)


@operation()
def file_attributes(path: str, user: str, group: str, mode: str):
    """Owner and mode of an existing file (no content is touched, nothing is created)."""
    current = host.get_fact(File, path=path)
    if current:
        yield from _repair_owner_and_mode(path, current, user, group, mode)


def _repair_owner_and_mode(path: str, current: dict, user: str, group: str, mode: str):
    if current["user"] != user or current["group"] != group:
        yield StringCommand(f"chown {user}:{group} {shlex.quote(path)}")
    if str(current["mode"]) != mode.lstrip("0"):  # pyinfra reports modes as octal digits, e.g. 600
        yield StringCommand(f"chmod {mode} {shlex.quote(path)}")


def _replace_file(dest, content, user, group, mode, check, check_in_place, owes):
    tmp, old = shlex.quote(f"{dest}.federate-new"), shlex.quote(f"{dest}.federate-old")
    quoted = shlex.quote(dest)
    # mkdir -p leaves an existing parent's mode alone (install -d would reset it)
    yield StringCommand(f"mkdir -p {shlex.quote(dest.rsplit('/', 1)[0] or '/')}")
    yield StringCommand(f"rm -f {tmp} && (umask 077 && touch {tmp})")
    yield FileUploadCommand(StringIO(content), f"{dest}.federate-new")
    yield StringCommand(f"chown {user}:{group} {tmp} && chmod {mode} {tmp}")
    if check and not check_in_place:
        yield StringCommand(f"{check.format(path=tmp)} || {{ rm -f {tmp}; exit 1; }}")
    yield from _owe(owes)
    if check and check_in_place:
        yield StringCommand(
            f"{{ [ ! -e {quoted} ] || cp -a {quoted} {old}; }} && mv -f {tmp} {quoted} && "
            f"{{ {check.format(path=quoted)} || {{ if [ -e {old} ]; then mv -f {old} {quoted}; "
            f"else rm -f {quoted}; fi; exit 1; }}; }} && rm -f {old}")
        return
    yield StringCommand(f"mv -f {tmp} {quoted}")


@operation()
def generated_once(path: str, command: str, user: str, mode: str = "600"):
    """Create `path` by running `command` (which writes to $OUT) unless it already exists.

    Used for signing keys and secrets: never overwritten once made (`file_attributes` repairs
    their owner and mode without counting as a new secret). The file is written to a temporary
    name, given its owner and mode, then renamed, so a half-written key never exists.
    """
    if host.get_fact(File, path=path):
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


class VenvBroken(FactBase):
    """True when the venv exists but its interpreter or pip does not run (an interrupted creation)."""

    def command(self, venv: str) -> str:
        v = shlex.quote(venv)
        return f"[ -e {v} ] && ! {v}/bin/python -m pip --version >/dev/null 2>&1 && echo yes || echo no"

    def process(self, output):
        return "".join(output).strip() == "yes"


class VenvState(FactBase):
    """'ok', 'broken' (interpreter or pip unusable: an interrupted creation), 'inconsistent'
    (pip check fails or Synapse does not import: a package missing) or 'absent'."""

    def command(self, venv: str) -> str:
        v = shlex.quote(venv)
        return (f"if [ ! -e {v} ]; then echo absent; "
                f"elif ! {v}/bin/python -m pip --version >/dev/null 2>&1; then echo broken; "
                f"elif {v}/bin/python -m pip check >/dev/null 2>&1 && "
                f"{v}/bin/python -c 'import synapse.app.homeserver' >/dev/null 2>&1; then echo ok; "
                f"else echo inconsistent; fi")

    def process(self, output):
        return "".join(output).strip()


@operation()
def venv_usable(venv: str):
    """A venv whose interpreter or pip does not run is removed, so it is created again.
    (A cheap fact: the slow pip check and import of VenvState are left to venv_consistent.)"""
    if host.get_fact(VenvBroken, venv=venv):
        yield StringCommand(f"rm -rf {shlex.quote(venv)}")


@operation()
def venv_consistent(venv: str, requirement: str, owes: list[str] = ()):
    """Reinstall when a package of the venv went missing or broken (pip check, import)."""
    if host.get_fact(VenvState, venv=venv) == "inconsistent":
        yield from _owe(owes)
        pip = f"{shlex.quote(venv)}/bin/python -m pip"
        yield StringCommand(f"{pip} install --force-reinstall --no-deps {shlex.quote(requirement)}"
                            f" && {pip} install {shlex.quote(requirement)}")


class DpkgInterrupted(FactBase):
    """True when an earlier dpkg run was cut off (it then refuses to install anything)."""

    def command(self) -> str:
        return "[ -n \"$(ls -A /var/lib/dpkg/updates 2>/dev/null)\" ] && echo yes || echo no"

    def process(self, output):
        return "".join(output).strip() == "yes"


@operation()
def dpkg_consistent():
    """Finish a cut dpkg run. The cut run's dpkg may still hold the lock: retry until it is free."""
    if host.get_fact(DpkgInterrupted):
        yield StringCommand("for i in $(seq 300); do DEBIAN_FRONTEND=noninteractive dpkg --configure -a"
                            " 2>/dev/null && exit 0; sleep 1; done; DEBIAN_FRONTEND=noninteractive dpkg --configure -a")


class InstalledSynapse(FactBase):
    """The Synapse version installed in a venv, or None."""

    def command(self, venv: str) -> str:
        return (f"{shlex.quote(venv)}/bin/python -c 'import synapse; print(synapse.__version__)'"
                " 2>/dev/null || echo none")

    def process(self, output):
        value = "".join(output).strip()
        return None if value == "none" else value


@operation()
def owed_before_install(venv: str, version: str, owes: list[str]):
    """Before the venv changes version, note the restarts that change will owe."""
    if host.get_fact(InstalledSynapse, venv=venv) not in (None, version):
        yield from _owe(owes)


@operation()
def settled(marker: str):
    """The owed action ran: forget it."""
    if host.get_fact(PathExists, path=marker):
        yield StringCommand(f"rm -f {shlex.quote(marker)}")


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


class DowngradeVerdict(FactBase):
    """Runs the host-side downgrade check: 'ok' or 'refused: <why>'."""

    def command(self, venv: str, version: str, databases: list[str], script: str) -> str:
        args = " ".join(shlex.quote(a) for a in [version, *databases])
        return f"{shlex.quote(venv)}/bin/python -c {shlex.quote(script)} {args}"

    def process(self, output):
        return "".join(output).strip()
