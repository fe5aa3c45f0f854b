"""Facts that fold into one command when they are read together (factcache): a process per fact
costs a host more than the facts themselves, and a converged deploy asks dozens of each kind.

A batch takes the facts of its kind it can answer exactly (`part`: what each asks about, None for
one it leaves alone), makes one command for all their parts, and splits its output into what each
part's own command prints (None when the output is not the shape it expects: then each fact is
asked alone). pyinfra's own fact parses each part, so the values are pyinfra's.
"""

from __future__ import annotations

import re
import shlex

from pyinfra.facts.files import LINUX_STAT_COMMAND, Directory, File, Link, Sha1File
from pyinfra.facts.postgres import PostgresDatabases, PostgresRoles
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from federate.pyinfra_ext.facts import system_unit


class Batch:
    """Facts of one kind folded into one command."""

    def part(self, cls, kwargs: dict):
        """What a fact asks about, when this batch answers it exactly; else None."""
        raise NotImplementedError

    def command(self, parts: list) -> str:
        raise NotImplementedError

    def split(self, lines: list[str], parts: list) -> dict | None:
        """{part: the lines its own command prints}; None when the output is not what was expected."""
        raise NotImplementedError

    def prime(self, fact, part) -> None:
        """Give a fact what its command would have kept for its process (most keep nothing)."""


class UnitsShown(Batch):
    """SystemdStatus and SystemdEnabled of single system units, from one `systemctl show` of them
    all: each `systemctl show` costs the host about 10 ms of CPU (systemd answers it over D-Bus),
    and a converged deploy asks a dozen. Each unit's block is what its own command prints, and
    pyinfra's own fact parses it."""

    def part(self, cls, kwargs: dict):
        services = kwargs.get("services")
        one = isinstance(services, list) and len(services) == 1 and isinstance(services[0], str)
        if cls in (SystemdStatus, SystemdEnabled) and one and kwargs == system_unit(services[0]):
            return services[0]
        return None

    def command(self, units: list[str]) -> str:
        return ("command -v systemctl >/dev/null 2>&1 || exit 97; systemctl show --all --property Id "
                "--property SubState --property UnitFileState " + " ".join(shlex.quote(u) for u in units))

    def split(self, lines: list[str], units: list[str]) -> dict | None:
        """{unit: its block's lines}; None unless there is one block per unit (blank lines between)."""
        blocks, block = [], []
        for line in [*lines, ""]:
            if line.strip():
                block.append(line)
            elif block:
                blocks.append(block)
                block = []
        return dict(zip(units, blocks)) if len(blocks) == len(units) else None


class QueriesRun(Batch):
    """PostgresRoles and PostgresDatabases (psql's defaults: the local server as the asking user)
    from one psql with both queries: a psql costs the host about 30 ms of CPU. Each query's
    output ends in its row count, as its own psql prints it."""

    ROWS = re.compile(r"\(\d+ rows?\)")

    def part(self, cls, kwargs: dict):
        if cls not in (PostgresRoles, PostgresDatabases) or any(value is not None for value in kwargs.values()):
            return None
        return cls.psql_command

    def command(self, queries: list[str]) -> str:
        return "command -v psql >/dev/null 2>&1 || exit 97; psql -A " + " ".join(f"-c {shlex.quote(q)}" for q in queries)

    def split(self, lines: list[str], queries: list[str]) -> dict | None:
        outputs, output = [], []
        for line in lines:
            output.append(line)
            if self.ROWS.fullmatch(line.strip()):
                outputs.append(output)
                output = []
        return dict(zip(queries, outputs)) if len(outputs) == len(queries) and not output else None


def _plain_path(path) -> bool:
    """A path the batches below name exactly in their output (no newline, no backslash, no `~`)."""
    return isinstance(path, str) and path.startswith("/") and not any(c in path for c in "\n\\")


class PathsStatted(Batch):
    """File, Directory and Link of absolute paths from one `stat` of them all. Each path's stat
    line follows its name, as given; a path that does not exist prints nothing, as its own
    command does (which stats only what exists)."""

    FORMAT = LINUX_STAT_COMMAND.removeprefix("stat -c '").removesuffix("'")

    def part(self, cls, kwargs: dict):
        return kwargs["path"] if cls in (File, Directory, Link) and _plain_path(kwargs.get("path")) else None

    def command(self, paths: list[str]) -> str:
        return (f"stat --printf {shlex.quote('%n' + chr(92) + 'n' + self.FORMAT + chr(92) + 'n')} -- "
                + " ".join(shlex.quote(p) for p in paths) + " 2>/dev/null; true")

    def split(self, lines: list[str], paths: list[str]) -> dict | None:
        found = dict(zip(lines[::2], ([line] for line in lines[1::2])))
        if len(lines) % 2 or not set(found) <= set(paths):
            return None
        return {path: found.get(path, []) for path in paths}


class FilesHashed(Batch):
    """Sha1File of absolute paths from one `sha1sum` of them all: `HASH  PATH` for each file that
    exists (a missing path or a directory prints nothing, as its own command does)."""

    def part(self, cls, kwargs: dict):
        return kwargs["path"] if cls is Sha1File and _plain_path(kwargs.get("path")) else None

    def prime(self, fact, part) -> None:
        fact.command(path=part)  # pyinfra's hash facts keep the path their command was given for their process

    def command(self, paths: list[str]) -> str:
        return "sha1sum -- " + " ".join(shlex.quote(p) for p in paths) + " 2>/dev/null; true"

    def split(self, lines: list[str], paths: list[str]) -> dict | None:
        found = {line.partition("  ")[2]: [line] for line in lines}
        if not set(found) <= set(paths):
            return None
        return {path: found.get(path, []) for path in paths}


BATCHES = (UnitsShown(), QueriesRun(), PathsStatted(), FilesHashed())
