"""apt and dpkg: finishing what an interrupted run left."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation

from federate.pyinfra_ext.factcache import asks


class DpkgInterrupted(FactBase):
    """True when an earlier dpkg run was cut off (it then refuses to install anything)."""

    def command(self) -> str:
        return "[ -n \"$(ls -A /var/lib/dpkg/updates 2>/dev/null)\" ] && echo yes || echo no"

    def process(self, output):
        return "".join(output).strip() == "yes"


@asks(lambda **_: [(DpkgInterrupted, {})])
@operation()
def dpkg_consistent():
    """Finish a cut dpkg run. The cut run's dpkg may still hold the lock: retry until it is free."""
    if host.get_fact(DpkgInterrupted):
        yield StringCommand("for i in $(seq 300); do DEBIAN_FRONTEND=noninteractive dpkg --configure -a"
                            " 2>/dev/null && exit 0; sleep 1; done; DEBIAN_FRONTEND=noninteractive dpkg --configure -a")
