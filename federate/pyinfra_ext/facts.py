"""Facts pyinfra does not ship."""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase


def system_unit(unit: str) -> dict:
    """The arguments of pyinfra's SystemdStatus and SystemdEnabled for one unit of the system's
    manager, as systemd.service asks them (and factcache's batch of units answers them)."""
    return {"user_mode": False, "machine": None, "user_name": None, "services": [unit]}


class PathExists(FactBase):
    """Whether anything exists at a path, following symlinks (certbot's live/ files are links)."""

    def command(self, path: str) -> str:
        return f"test -e {shlex.quote(path)} && echo yes || echo no"

    def process(self, output):
        return "".join(output).strip() == "yes"


# pyinfra's Users fact runs about ten processes per user (grep, lastlog, id twice, ...): a quarter
# of a second of host CPU on every run for the twenty users of a fresh Debian host. This command
# prints the same lines (passwd entry|group|groups|lastlog line|password hash) from one `lastlog`
# and one awk reading the same files; factcache runs it in Users' place when it reads facts together.
USERS_COMMAND = r"""if [ -r /etc/shadow ]; then shadow=/etc/shadow; else shadow=/dev/null; fi
lastlog 2>/dev/null | awk -F: -v shadow="$shadow" '
FILENAME == "/etc/group" { name[$3] = $1; n = split($4, member, ","); for (i = 1; i <= n; i++) groups[member[i]] = groups[member[i]] " " $1; next }
FILENAME == shadow { password[$1] = $2; next }
FILENAME == "/etc/passwd" { group = ($4 in name) ? name[$4] : $4; print $0 "|" group "|" group groups[$1] "|" last[$1] "|" password[$1]; next }
{ split($0, field, " "); line = $0; gsub(/ +/, " ", line); last[field[1]] = line }
' - /etc/group "$shadow" /etc/passwd"""
