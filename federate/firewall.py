"""The host firewall (ufw): deny incoming except SSH (the port the deploy uses), 80, 443, 8448."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, deploy, operation
from pyinfra.operations import apt

from federate.settings import HostSettings

WEB_PORTS = (80, 443, 8448)


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


@deploy("Firewall")
def configure(settings: HostSettings):
    apt.packages(name="ufw", packages=["ufw"])
    ufw_policy(name=f"ufw: allow only SSH ({settings.ssh_port}), 80, 443, 8448",
               rules=wanted_rules(settings.ssh_port))
