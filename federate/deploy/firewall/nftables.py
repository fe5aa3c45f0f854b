"""nftables: one `inet federate` table, checked with `nft -c`, loaded atomically, drift found by
comparing the live table with what the file makes; removed when ufw takes over."""

from __future__ import annotations

import ipaddress
import shlex

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation
from pyinfra.facts.systemd import SystemdEnabled

from federate.deploy.firewall import WEB_PORTS, Firewall, metrics_openings, policy_summary
from federate.deploy.templating import render
from federate.pyinfra_ext import declared
from federate.pyinfra_ext.factcache import asks
from federate.pyinfra_ext.facts import system_unit
from federate.pyinfra_ext.files import config_file, file_attributes

NFTABLES_CONF = "/etc/nftables.conf"
NFT_TABLE = "inet federate"


def render_nftables_conf(ssh_port: int, rate_limit: bool = True, trusted_ranges=(), metrics=()) -> str:
    """The policy; with `rate_limit`, new SSH connections are limited per source address except
    from `trusted_ranges` (addresses or CIDR ranges, IPv4 and IPv6); each of `metrics`
    (MetricsOpening) lets its scrapers reach its listener's address and port."""
    trusted = list(trusted_ranges) if rate_limit else []
    return render("nftables.conf.j2", ssh_port=ssh_port, web_ports=[p for p in WEB_PORTS if p != ssh_port],
                  rate_limit=rate_limit, trusted4=[r for r in trusted if ipaddress.ip_network(r).version == 4],
                  trusted6=[r for r in trusted if ipaddress.ip_network(r).version == 6],
                  metrics=[{"family": "ip" if ipaddress.ip_address(o.bind).version == 4 else "ip6", "bind": o.bind,
                            "port": o.port, "scrapers": o.scrapers} for o in metrics])


class NftablesLive(FactBase):
    """'same' when the live federate table is what `path` makes, 'differs' otherwise.

    What the file makes is read back from a scratch network namespace, so both sides are nft's
    own listing and any drift (a deleted rule, a removed table) shows. Listed with `-t` (no set
    contents): the SSH meters fill with the addresses of whoever connects, which is no drift.
    """

    requires_command = "nft"

    def command(self, path: str) -> str:
        load = shlex.quote(f"nft -f {shlex.quote(path)} && nft -t list table {NFT_TABLE}")
        return (f"live=$(nft -t list table {NFT_TABLE} 2>/dev/null); "
                f"want=$(unshare -n sh -c {load} 2>/dev/null); "
                '[ -n "$want" ] && [ "$live" = "$want" ] && echo same || echo differs')

    def process(self, output):
        return "".join(output).strip()


class FederateNftables(FactBase):
    """What is left of a federate nftables policy: 'table' (loaded) and 'conf' (ours in
    /etc/nftables.conf). Whether the unit loads it at boot is SystemdEnabled's (read with the
    other units)."""

    def command(self) -> str:
        return ("command -v nft >/dev/null || exit 0; "
                f"nft list table {NFT_TABLE} >/dev/null 2>&1 && echo table; "
                f"grep -qs '^# Managed by federate' {NFTABLES_CONF} && echo conf; true")

    def process(self, output):
        return {line.strip() for line in output if line.strip()}


@asks(lambda path, **_: [(NftablesLive, {"path": path})])
@operation()
def nftables_live(path: str):
    """The live federate table is exactly what `path` makes (loaded atomically with nft -f)."""
    if host.get_fact(NftablesLive, path=path) != "same":
        yield StringCommand(f"nft -f {shlex.quote(path)}")


NFTABLES_UNIT = system_unit("nftables.service")


@asks(lambda **_: [(FederateNftables, {}), (SystemdEnabled, NFTABLES_UNIT)])
@operation()
def nftables_off():
    """No federate nftables policy, now or after a reboot (run once ufw keeps SSH open).

    A policy of the admin's own (not ours) is left alone."""
    found = host.get_fact(FederateNftables) or set()
    if "conf" in found and host.get_fact(SystemdEnabled, **NFTABLES_UNIT).get("nftables.service"):
        yield StringCommand("systemctl disable -q nftables")
    if "table" in found:
        yield StringCommand(f"nft delete table {NFT_TABLE}")


class Nftables(Firewall):
    name = "nftables"
    packages = ("nftables",)

    def apply(self, settings):
        config_file(name="nftables.conf", dest=NFTABLES_CONF, mode="755",
                    content=render_nftables_conf(settings.ssh_port, settings.ssh.rate_limit,
                                                 settings.ssh.trusted_ranges, metrics_openings(settings)),
                    check="nft -c -f {path}")
        file_attributes(name="nftables.conf owner and mode", path=NFTABLES_CONF, user="root", group="root",
                        mode="755")
        nftables_live(name=f"nftables: {policy_summary(settings)}",
                      path=NFTABLES_CONF)
        # Loaded at boot by the unit; not started here, as its stop flushes every table, ufw's too.
        declared.service(name="nftables: loaded at boot", service="nftables", enabled=True)

    def retire(self):
        nftables_off(name="nftables: federate policy off (firewall is ufw)")
