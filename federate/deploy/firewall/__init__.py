"""The host firewall, one strategy per host: ufw or nftables. Incoming is denied except SSH (the
port the deploy uses), 80, 443 and 8448, and a metrics listener on a private address from its
scrapers only. New SSH connections are rate limited per source address (settings `ssh`), except
from trusted ranges; established ones, the deploy's own, never count.
On a switch the chosen firewall (which keeps SSH open) goes live first; only then is the other one
removed."""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra.api import deploy

from federate.settings import HostSettings

WEB_PORTS = (80, 443, 8448)


@dataclass(frozen=True)
class MetricsOpening:
    """The only way in to a metrics listener on a private address: from its scrapers, to its
    address and port (a listener on loopback needs none)."""
    scrapers: tuple[str, ...]
    bind: str
    port: int


def metrics_openings(settings: HostSettings) -> list[MetricsOpening]:
    return [MetricsOpening(hs.metrics.scrapers, hs.metrics.bind, hs.metrics.port) for hs in settings.homeservers
            if hs.metrics is not None and not hs.metrics.loopback]


def policy_summary(settings: HostSettings) -> str:
    """What the firewall lets in, for the operation's name."""
    metrics = "".join(f", {o.bind}:{o.port} from {', '.join(o.scrapers)}" for o in metrics_openings(settings))
    return f"allow only SSH ({settings.ssh_port}), 80, 443, 8448{metrics}"


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
