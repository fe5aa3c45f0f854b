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
