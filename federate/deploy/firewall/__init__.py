"""The host firewall, one strategy per host: ufw or nftables. Incoming is denied except SSH (the
port the deploy uses), 80, 443 and 8448. New SSH connections are rate limited per source address
(settings `ssh`), except from trusted ranges; established ones, the deploy's own, never count.
On a switch the chosen firewall (which keeps SSH open) goes live first; only then is the other one
removed."""

from __future__ import annotations

from pyinfra.api import deploy

from federate.settings import HostSettings

WEB_PORTS = (80, 443, 8448)


class Firewall:
    name: str
    packages: tuple[str, ...]

    def apply(self, settings: HostSettings) -> None:
        """Exactly SSH and the web ports open, live now and after a reboot."""
        raise NotImplementedError

    def retire(self) -> None:
        """No rule of ours left (run once the other firewall keeps SSH open)."""
        raise NotImplementedError


def firewalls() -> dict[str, Firewall]:
    from federate.deploy.firewall.nftables import Nftables
    from federate.deploy.firewall.ufw import Ufw

    return {"ufw": Ufw(), "nftables": Nftables()}


def firewall_for(settings: HostSettings) -> Firewall:
    return firewalls()[settings.firewall]


@deploy("Firewall")
def configure(settings: HostSettings):
    chosen = firewall_for(settings)
    chosen.apply(settings)
    for other in [f for name, f in firewalls().items() if name != settings.firewall]:
        other.retire()
