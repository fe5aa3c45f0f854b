"""ufw: incoming denied except SSH, 80, 443 and 8448; turned off without a trace when nftables takes over."""

from __future__ import annotations


from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation
from pyinfra.facts.server import Which

from federate.deploy.firewall import WEB_PORTS, Firewall


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


class Ufw(Firewall):
    name = "ufw"
    packages = ("ufw",)

    def apply(self, settings):
        ufw_policy(name=f"ufw: allow only SSH ({settings.ssh_port}), 80, 443, 8448",
                   rules=wanted_rules(settings.ssh_port))

    def retire(self):
        ufw_off(name="ufw: off, no rules left (firewall is nftables)")
