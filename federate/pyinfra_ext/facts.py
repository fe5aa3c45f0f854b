"""Facts pyinfra does not ship."""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase


class PathExists(FactBase):
    """Whether anything exists at a path, following symlinks (certbot's live/ files are links)."""

    def command(self, path: str) -> str:
        return f"test -e {shlex.quote(path)} && echo yes || echo no"

    def process(self, output):
        return "".join(output).strip() == "yes"
