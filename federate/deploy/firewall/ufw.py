"""ufw: incoming denied except SSH, 80, 443 and 8448; turned off without a trace when nftables takes over.

SSH is `limit`ed (ufw refuses a source's 6th new connection within 30 seconds), except from the
trusted ranges, whose `allow` rules must come first in their chain: ufw stops at the first rule
that matches, so a trusted rule after the `limit` would never be reached."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation
from pyinfra.facts.server import Which

from federate.deploy.firewall import WEB_PORTS, Firewall, metrics_openings, policy_summary
from federate.pyinfra_ext.factcache import asks


class UfwState(FactBase):
    """ufw's enabled state, default incoming policy, added rules (known even when inactive) and
    the order of the rules in each chain (`order`: {"v4": [rule, ...], "v6": [...]}, each rule in
    `ufw show added` form, None for one of another shape).

    Read from ufw's files and one iptables call, as `ufw status` and `ufw show added` work them
    out: ufw is a Python program, and its two runs cost a host 0.1 s of CPU on every run. Active
    means what `ufw status` means (its chains are loaded) and that ufw.conf keeps it on at boot.
    Only when a rule has a shape federate never writes is `ufw show added` asked for the rules."""

    requires_command = "ufw"

    def command(self) -> str:
        # each rule tuple once, after the family it is in ("user" or "user6", as the file is named)
        return ("if iptables -w -n -L ufw-user-input >/dev/null 2>&1 && grep -qs '^ENABLED=yes' /etc/ufw/ufw.conf; "
                "then echo 'Status: active'; else echo 'Status: inactive'; fi; "
                "grep '^DEFAULT_INPUT_POLICY=' /etc/default/ufw; "
                "for f in user user6; do sed -n \"s/^### tuple ### /$f /p\" /etc/ufw/$f.rules 2>/dev/null; done "
                f"| awk '{{ print }} {ODD_SHAPE} {{ odd = 1 }} END {{ exit !odd }}' && ufw show added; true")

    @staticmethod
    def default():
        return {"active": False, "incoming": None, "rules": [], "order": {"v4": [], "v6": []}}

    def process(self, output):
        state, shown = self.default(), []
        for line in output:
            line = line.strip()
            if line.startswith("Status:"):
                state["active"] = line.split(":", 1)[1].strip() == "active"
            elif line.startswith("DEFAULT_INPUT_POLICY="):
                state["incoming"] = line.split("=", 1)[1].strip('"')
            elif line.startswith("ufw "):
                shown.append(line[len("ufw "):])
            elif line.startswith(("user ", "user6 ")):
                family, _, rule_tuple = line.partition(" ")
                state["order"]["v4" if family == "user" else "v6"].append(rule_of_tuple(rule_tuple))
        # `ufw show added` lists each rule once, IPv4's first: a rule on both families is one rule
        derived = list(dict.fromkeys(state["order"]["v4"] + state["order"]["v6"]))
        state["rules"] = shown if None in derived else derived
        return state


ANYWHERE = ("0.0.0.0/0", "::/0")
# awk's test for a line "FAMILY ACTION PROTO DPORT DST SPORT SRC DIRECTION" whose tuple rule_of_tuple
# cannot put in `ufw show added` form
ODD_SHAPE = '(NF != 8 || $3 != "tcp" || $4 !~ /^[0-9]+$/ || $6 != "any" || $8 != "in")'


def rule_of_tuple(rule_tuple: str) -> str | None:
    """A rule of ufw's rules files (`### tuple ### ACTION PROTO DPORT DST SPORT SRC DIRECTION`) in
    `ufw show added` form; None for a shape federate never writes (an interface, a comment, a
    port range, another protocol, ...)."""
    fields = rule_tuple.split()
    if len(fields) != 7:
        return None
    action, proto, dport, dst, sport, src, direction = fields
    if proto != "tcp" or not dport.isdigit() or sport != "any" or direction != "in":
        return None
    if src in ANYWHERE and dst in ANYWHERE:
        return f"{action} {dport}/{proto}"
    source = "" if src in ANYWHERE else f"from {src} "
    return f"{action} {source}to {'any' if dst in ANYWHERE else dst} port {dport} proto {proto}"


def wanted_rules(ssh_port: int, rate_limit: bool = True, trusted_ranges=()) -> tuple[list[str], list[str]]:
    """(first, rules) in `ufw show added` form: `first` must lead their chain (the trusted
    ranges, ahead of the limit); then SSH (limited or not), so it is open before anything is
    denied, then the web ports."""
    first = [f"allow from {r} to any port {ssh_port} proto tcp" for r in trusted_ranges] if rate_limit else []
    ssh = f"{'limit' if rate_limit else 'allow'} {ssh_port}/tcp"
    return first, [ssh, *(f"allow {port}/tcp" for port in WEB_PORTS if port != ssh_port)]


def metrics_rules(openings) -> list[str]:
    """`ufw show added` form: each scraper to the listener's own address and port only."""
    return [f"allow from {scraper} to {o.bind} port {o.port} proto tcp" for o in openings for scraper in o.scrapers]


def _target(rule: str) -> str:
    """What a rule matches, without its action: ufw updates a rule in place (`Rule updated`) when
    a new one differs from it only in the action."""
    return rule.split(" ", 1)[-1]


def misplaced(order: dict[str, list[str | None]], first: list[str]) -> list[str]:
    """The rules of `first` that some other rule precedes in a chain (IPv4 or IPv6)."""
    late = []
    for rules in order.values():
        others_seen = False
        for rule in rules:
            if rule not in first:
                others_seen = True
            elif others_seen and rule not in late:
                late.append(rule)
    return [rule for rule in first if rule in late]


def policy_commands(state: dict, first: list[str], rules: list[str]) -> list[str]:
    """The ufw commands that turn `state` (UfwState) into exactly `first` + `rules`, SSH never closed.

    A wanted rule that differs from a present one only in its action (`allow 22/tcp` ->
    `limit 22/tcp`) replaces it in place, so the port stays open throughout; a trusted rule behind
    another rule (or present with another action) is deleted and prepended again.
    """
    present, commands = state["rules"], []
    late = misplaced(state["order"], first)
    for rule in first:
        clash = [p for p in present if p != rule and _target(p) == _target(rule)]
        for old in [*clash, *([rule] if rule in late else [])]:
            commands.append(f"ufw delete {old}")
    for rule in reversed(first):  # each prepend goes to the top: the last one first keeps the order
        if rule not in present or rule in late:
            commands.append(f"ufw prepend {rule}")
    for rule in rules:
        if rule not in present:
            commands.append(f"ufw {rule}")
    wanted = {*first, *rules}
    in_place = {_target(rule) for rule in rules}
    deleted = {c[len("ufw delete "):] for c in commands if c.startswith("ufw delete ")}
    for rule in present:
        if rule not in wanted and _target(rule) not in in_place and rule not in deleted:
            commands.append(f"ufw delete {rule}")
    return commands


@asks(lambda **_: [(UfwState, {})])
@operation()
def ufw_policy(rules: list[str], first: list[str] | None = None):
    """Exactly `first` + `rules` allowed (`first` leading their chain), everything else incoming
    denied, ufw enabled."""
    state = host.get_fact(UfwState)
    for command in policy_commands(state, list(first or []), rules):
        yield StringCommand(command)
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


@asks(lambda **_: [(Which, {"command": "ufw"}), (UfwState, {}), (UfwChains, {})])
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
        first, rules = wanted_rules(settings.ssh_port, settings.ssh.rate_limit, settings.ssh.trusted_ranges)
        ufw_policy(name=f"ufw: {policy_summary(settings)}",
                   rules=rules + metrics_rules(metrics_openings(settings)), first=first)

    def retire(self):
        ufw_off(name="ufw: off, no rules left (firewall is nftables)")
