"""Owed restarts and reloads that survive an interrupted run.

A pending marker is a file saying an action (a restart, a reload) is owed: it is written before
the change that needs the action goes live and removed after the action ran, so a run cut in
between is finished by the next one.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import StringCommand, operation
from pyinfra.api.util import get_file_sha1
from pyinfra.facts.files import Sha1File

from federate.pyinfra_ext.factcache import asks, wants
from federate.pyinfra_ext.facts import PathExists

PENDING_DIR = "/var/lib/federate/pending"


def pending_marker(action: str) -> str:
    """The marker file of `action`, e.g. pending_marker('reload-nginx')."""
    return f"{PENDING_DIR}/{action}"


def owe(markers) -> list[StringCommand]:
    """Commands that write `markers` (one path or several); none for no marker."""
    markers = [markers] if isinstance(markers, str) else list(markers or ())
    if not markers:
        return []
    return [StringCommand(f"mkdir -p {PENDING_DIR} && touch " + " ".join(shlex.quote(m) for m in markers))]


@asks(lambda uploads, **_: [(Sha1File, {"path": remote}) for _, remote in uploads])
@operation()
def owed_before_uploads(uploads: list[tuple[str, str]], marker: str):
    """Owe `marker` before any of `uploads` (local path, remote path) replaces a file, so a run cut
    between the upload and the reload it needs still reloads on the next run."""
    for local, remote in uploads:
        # compared the way files.put compares (sha1), so both agree on what will change
        if host.get_fact(Sha1File, path=remote) != get_file_sha1(local):
            yield from owe(marker)
            return


def changed_or_owed(ops: list, marker: str):
    """An `_if` condition: one of `ops` changed something, or an earlier run left `marker`."""
    wants([(PathExists, {"path": marker})])
    def condition() -> bool:
        return any(op.did_change() for op in ops) or host.get_fact(PathExists, path=marker)
    return condition


@asks(lambda marker, **_: [(PathExists, {"path": marker})])
@operation()
def settled(marker: str):
    """The owed action ran: forget it."""
    if host.get_fact(PathExists, path=marker):
        yield StringCommand(f"rm -f {shlex.quote(marker)}")
