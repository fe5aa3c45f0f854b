"""The host firewall (ufw or nftables): deny incoming except SSH (the port the deploy uses), 80,
443, 8448. A switch between the two opens the new one's SSH port before the old one goes away."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, deploy, operation
from pyinfra.facts.server import Which
from pyinfra.operations import apt, systemd

from federate.ops import config_file, file_attributes
from federate.settings import HostSettings
from federate.templates import render

WEB_PORTS = (80, 443, 8448)
NFTABLES_CONF = "/etc/nftables.conf"
NFT_TABLE = "inet federate"


class UfwState(FactBase):
    """ufw's enabled state, default incoming policy and added rules (known even when inactive)."""

    requires_command = "ufw"

    def command(self) -> str:
        return ("ufw status | head -n 1; "
                "grep '^DEFAULT_INPUT_POLICY=' /etc/default/ufw; "
                "ufw show added")

    @staticmethod
    def default():
        return {"active": False, "incoming": None, "rules": []}

    def process(self, output):
        state = {"active": False, "incoming": None, "rules": []}
        for line in output:
            line = line.strip()
            if line.startswith("Status:"):
                state["active"] = line.split(":", 1)[1].strip() == "active"
            elif line.startswith("DEFAULT_INPUT_POLICY="):
                state["incoming"] = line.split("=", 1)[1].strip('"')
            elif line.startswith("ufw "):
                state["rules"].append(line[len("ufw "):])
        return state


def wanted_rules(ssh_port: int) -> list[str]:
    """ufw rules in `ufw show added` form; SSH first so it is open before anything is denied."""
    return [f"allow {port}/tcp" for port in (ssh_port, *WEB_PORTS)]


@operation()
def ufw_policy(rules: list[str]):
    """Exactly `rules` allowed, everything else incoming denied, ufw enabled."""
    state = host.get_fact(UfwState)
    for rule in rules:
        if rule not in state["rules"]:
            yield StringCommand(f"ufw {rule}")
    for rule in state["rules"]:
        if rule not in rules:
            yield StringCommand(f"ufw delete {rule}")
    if state["incoming"] != "DROP":
        yield StringCommand("ufw default deny incoming")
    if not state["active"]:
        yield StringCommand("ufw --force enable")


class UfwChains(FactBase):
    """iptables/ip6tables lines (`-S` form) that are ufw's: its chains and the jumps into them."""

    def command(self) -> str:
        return "for t in iptables ip6tables; do command -v $t >/dev/null && $t -S 2>/dev/null; done | grep -F ufw; true"

    def process(self, output):
        return [line.strip() for line in output if line.strip()]


# ufw's own stop keeps its empty primary chains (and the jumps into them) until the next boot;
# remove them so no trace of ufw stays in the ruleset. Only ufw's jumps and chains are touched.
UFW_CHAINS_GONE = (
    "for t in iptables ip6tables; do command -v $t >/dev/null || continue; "
    "$t -S | grep -E '^-A (INPUT|OUTPUT|FORWARD) .*-j ufw6?-' | sed 's/^-A/-D/' "
    "| while read -r rule; do $t $rule; done; "
    "chains=$($t -S | sed -n 's/^-N \\(ufw6\\?-.*\\)$/\\1/p'); "
    "for c in $chains; do $t -F $c; done; for c in $chains; do $t -X $c; done; done"
)


@operation()
def ufw_off():
    """ufw disabled with no rules or chains left (run once the nftables policy that keeps SSH is live)."""
    if not host.get_fact(Which, command="ufw"):
        return
    state = host.get_fact(UfwState)
    reset = state["active"] or state["rules"]
    if reset:
        yield StringCommand("ufw --force reset")
    if reset or host.get_fact(UfwChains):
        yield StringCommand(UFW_CHAINS_GONE)


# ---------------------------------------------------------------- nftables

def render_nftables_conf(ssh_port: int) -> str:
    return render("nftables.conf.j2", ssh_port=ssh_port, web_ports=[p for p in WEB_PORTS if p != ssh_port])


class NftablesLive(FactBase):
    """'same' when the live federate table is what `path` makes, 'differs' otherwise.

    What the file makes is read back from a scratch network namespace, so both sides are nft's
    own listing and any drift (a deleted rule, a removed table) shows.
    """

    requires_command = "nft"

    def command(self, path: str) -> str:
        load = shlex.quote(f"nft -f {shlex.quote(path)} && nft list table {NFT_TABLE}")
        return (f"live=$(nft list table {NFT_TABLE} 2>/dev/null); "
                f"want=$(unshare -n sh -c {load} 2>/dev/null); "
                '[ -n "$want" ] && [ "$live" = "$want" ] && echo same || echo differs')

    def process(self, output):
        return "".join(output).strip()


class FederateNftables(FactBase):
    """What is left of a federate nftables policy: 'table' (loaded), 'conf' (ours in
    /etc/nftables.conf) and 'enabled' (the unit loads it at boot)."""

    def command(self) -> str:
        return ("command -v nft >/dev/null || exit 0; "
                f"nft list table {NFT_TABLE} >/dev/null 2>&1 && echo table; "
                f"grep -qs '^# Managed by federate' {NFTABLES_CONF} && echo conf; "
                "systemctl is-enabled -q nftables 2>/dev/null && echo enabled; true")

    def process(self, output):
        return {line.strip() for line in output if line.strip()}


@operation()
def nftables_live(path: str):
    """The live federate table is exactly what `path` makes (loaded atomically with nft -f)."""
    if host.get_fact(NftablesLive, path=path) != "same":
        yield StringCommand(f"nft -f {shlex.quote(path)}")


@operation()
def nftables_off():
    """No federate nftables policy, now or after a reboot (run once ufw keeps SSH open).

    A policy of the admin's own (not ours) is left alone."""
    found = host.get_fact(FederateNftables) or set()
    if {"conf", "enabled"} <= found:
        yield StringCommand("systemctl disable -q nftables")
    if "table" in found:
        yield StringCommand(f"nft delete table {NFT_TABLE}")


@deploy("Firewall")
def configure(settings: HostSettings):
    if settings.firewall == "nftables":
        _nftables(settings)
    else:
        _ufw(settings)


def _ufw(settings: HostSettings):
    apt.packages(name="ufw", packages=["ufw"])
    ufw_policy(name=f"ufw: allow only SSH ({settings.ssh_port}), 80, 443, 8448",
               rules=wanted_rules(settings.ssh_port))
    # ufw (which keeps SSH open) is live: now a federate nftables policy may go
    nftables_off(name="nftables: federate policy off (firewall is ufw)")


def _nftables(settings: HostSettings):
    apt.packages(name="nftables", packages=["nftables"])
    config_file(name="nftables.conf", dest=NFTABLES_CONF, mode="755",
                content=render_nftables_conf(settings.ssh_port), check="nft -c -f {path}")
    file_attributes(name="nftables.conf owner and mode", path=NFTABLES_CONF, user="root", group="root",
                    mode="755")
    nftables_live(name=f"nftables: allow only SSH ({settings.ssh_port}), 80, 443, 8448",
                  path=NFTABLES_CONF)
    # Loaded at boot by the unit; not started here, as its stop flushes every table, ufw's too.
    systemd.service(name="nftables: loaded at boot", service="nftables", enabled=True)
    # the federate table (which keeps SSH open) is live: now ufw may go
    ufw_off(name="ufw: off, no rules left (firewall is nftables)")
