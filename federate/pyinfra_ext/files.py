"""Files written atomically and checked before they go live; owner and mode repaired; secrets made once."""

from __future__ import annotations

import hashlib
import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase, FileUploadCommand, StringCommand, operation
from pyinfra.api.util import get_file_sha1
from pyinfra.facts.files import File, Sha1File

from federate.pyinfra_ext.factcache import asks
from federate.pyinfra_ext.owed import owe
from federate.pyinfra_ext.run import RUN_ID, temporary_name


@asks(lambda dest, **_: [(Sha1File, {"path": dest})])
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
    written before the new file goes live (see `federate.pyinfra_ext.owed`).
    """
    # None when the file is missing; one remote command either way (pyinfra caches no facts)
    if host.get_fact(Sha1File, path=dest) != hashlib.sha1(content.encode()).hexdigest():
        yield from _replace_file(dest, StringIO(content), user, group, mode, check, check_in_place, owes)


@asks(lambda dest, **_: [(Sha1File, {"path": dest})])
@operation()
def private_file(src: str, dest: str, user: str = "root", group: str = "root", mode: str = "600",
                 owes: str | list[str] = ()):
    """Upload a private file (a TLS key) from the controller: never shown by `--diff`, and never
    readable by others on the host, not even for a moment (it is created with its final mode)."""
    if host.get_fact(Sha1File, path=dest) != get_file_sha1(src):
        yield from _replace_file(dest, src, user, group, mode, None, False, owes)


@asks(lambda path, **_: [(File, {"path": path})])
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


def _replace_file(dest, source, user, group, mode, check, check_in_place, owes):
    """`source`: a file-like object or a local path."""
    new, old = temporary_name(dest, "new"), temporary_name(dest, "old")
    tmp, old, quoted = shlex.quote(new), shlex.quote(old), shlex.quote(dest)
    folder = dest.rsplit('/', 1)[0] or '/'
    # mkdir -p leaves an existing parent's mode alone (install -d would reset it). Another run's
    # temporary files are a cut run's: only the run that holds the host's deploy lock writes files
    # (a run whose lease was taken over finds its own gone and fails), so they go now.
    yield StringCommand(f"mkdir -p {shlex.quote(folder)} && find {shlex.quote(folder)} -maxdepth 1 -name "
                        f"{shlex.quote(dest.rsplit('/', 1)[-1] + '.federate-*')} ! -name {shlex.quote('*-' + RUN_ID)} "
                        "-delete")
    # created private first: the upload keeps the mode of the file it writes into
    yield StringCommand(f"(umask 077 && touch {tmp})")
    yield FileUploadCommand(source, new)
    yield StringCommand(f"chown {user}:{group} {tmp} && chmod {mode} {tmp}")
    if check and not check_in_place:
        yield StringCommand(f"{check.format(path=tmp)} || {{ rm -f {tmp}; exit 1; }}")
    yield from owe(owes)
    if check and check_in_place:
        yield StringCommand(
            f"{{ [ ! -e {quoted} ] || cp -a {quoted} {old}; }} && mv -f {tmp} {quoted} && "
            f"{{ {check.format(path=quoted)} || {{ if [ -e {old} ]; then mv -f {old} {quoted}; "
            f"else rm -f {quoted}; fi; exit 1; }}; }} && rm -f {old}")
        return
    yield StringCommand(f"mv -f {tmp} {quoted}")


@asks(lambda path, **_: [(File, {"path": path})])
@operation()
def generated_once(path: str, command: str, user: str, mode: str = "600"):
    """Create `path` by running `command` (which writes to $OUT) unless it already exists.

    For signing keys and secrets: never overwritten once made (`file_attributes` repairs their
    owner and mode without counting as a new secret). The file is written to a temporary name,
    given its owner and mode, then linked into place, so a half-written key never exists.
    """
    if host.get_fact(File, path=path):
        host.noop(f"{path} exists and is kept")
        return
    tmp = shlex.quote(temporary_name(path))
    # ln refuses to replace an existing file: of two runs making the same secret, one keeps its own
    yield StringCommand(
        f"umask 077 && export OUT={tmp} && {command}"
        f" && chown {user}:{user} {tmp} && chmod {mode} {tmp}"
        f" && {{ ln {tmp} {shlex.quote(path)} 2>/dev/null || [ -e {shlex.quote(path)} ]; }}; status=$?; rm -f {tmp}; exit $status"
    )


class ForeignOwned(FactBase):
    """True when anything under `path` is not owned by user:group. A failing find (a user that
    does not exist yet, while planning) also says True: the chown then runs once it exists."""

    def command(self, path: str, user: str, group: str) -> str:
        p, u, g = shlex.quote(path), shlex.quote(user), shlex.quote(group)
        return (f"if [ ! -e {p} ]; then echo none; "
                f"elif out=$(find {p} \\( ! -user {u} -o ! -group {g} \\) -print -quit 2>&1) && [ -z \"$out\" ]; "
                f"then echo owned; else echo foreign; fi")

    def process(self, output):
        return "".join(output).strip() == "foreign"


@asks(lambda path, user, group, **_: [(ForeignOwned, {"path": path, "user": user, "group": group})])
@operation()
def tree_owned(path: str, user: str, group: str):
    """Everything under `path` owned by user:group: one `chown -R` when anything is not (a tree
    moved to another user, or drift inside it)."""
    if host.get_fact(ForeignOwned, path=path, user=user, group=group):
        yield StringCommand(f"chown -R {shlex.quote(user)}:{shlex.quote(group)} {shlex.quote(path)}")
