"""The firewall's SSH rate limit: settings, ufw's rules and the commands that reach them, the
nftables meters. Observed on real hosts in tests/lab/test_ssh_limit.py."""

from __future__ import annotations

import subprocess

import pytest

from federate.deploy.firewall import nftables
from federate.deploy.firewall.ufw import ODD_SHAPE, UfwState, misplaced, policy_commands, rule_of_tuple, wanted_rules
from federate.host_data import schema
from federate.lab import topology
from federate.settings import DEFAULTS, SettingsError, Ssh, host_settings

HS = [{"server_name": "alpha.test"}]


def settings(**data):
    return host_settings("h1", {"homeservers": HS, **data})


# --- settings ------------------------------------------------------------------------------------

def test_the_limit_is_on_by_default_with_nobody_trusted():
    assert settings().ssh == Ssh(rate_limit=True, trusted_ranges=())
    assert DEFAULTS["ssh"] == {"rate_limit": True, "trusted_ranges": []}
    assert "ssh" in schema()["properties"]


def test_trusted_ranges_are_kept_in_ufws_form():
    ssh = settings(ssh={"trusted_ranges": ["198.51.100.0/24", "203.0.113.7/32", "203.0.113.8",
                                           "2001:DB8::/32", "2001:db8::1/128", "198.51.100.0/24"]}).ssh
    assert ssh.trusted_ranges == ("198.51.100.0/24", "203.0.113.7", "203.0.113.8", "2001:db8::/32", "2001:db8::1")
    assert settings(ssh={"rate_limit": False}).ssh == Ssh(False, ())


@pytest.mark.parametrize("ssh,field,problem", [
    ({"trusted_ranges": ["10.0.0.300/24"]}, "ssh.trusted_ranges[0]", "must be an address or CIDR range"),
    ({"trusted_ranges": ["192.0.2.0/24", "10.1.2.3/24"]}, "ssh.trusted_ranges[1]",
     "has host bits set: did you mean '10.1.2.0/24'?"),
    ({"trusted_ranges": ["0.0.0.0/0"]}, "ssh.trusted_ranges[0]", "trusts every address: set ssh.rate_limit: false"),
    ({"trusted_ranges": ["::/0"]}, "ssh.trusted_ranges[0]", "trusts every address"),
    ({"trusted_ranges": "10.0.0.0/8"}, "ssh.trusted_ranges", "must be a list of addresses or CIDR ranges"),
    ({"rate_limit": "no"}, "ssh.rate_limit", "must be true or false"),
    ({"trusted_range": []}, "ssh.trusted_range", "unknown key (did you mean 'trusted_ranges'?)"),
    (True, "ssh", "must be a mapping with 'rate_limit' and 'trusted_ranges', got True"),
])
def test_bad_ssh_settings_name_the_field(ssh, field, problem):
    with pytest.raises(SettingsError) as error:
        settings(ssh=ssh)
    assert error.value.field == field and problem in error.value.problem, str(error.value)


@pytest.mark.parametrize("key", ["ssh_rate_limit", "ssh_trusted_ranges"])
def test_ssh_keys_that_pyinfra_would_ignore_are_refused(key):
    with pytest.raises(SettingsError) as error:
        settings(**{key: []})
    assert error.value.field == key and f"did you mean ssh: {{'{key[4:]}': ...}}" in error.value.problem


# --- ufw -----------------------------------------------------------------------------------------

TRUSTED = ["allow from 10.8.0.0/16 to any port 22 proto tcp", "allow from 2001:db8::/32 to any port 22 proto tcp"]
LIMITED = ["limit 22/tcp", "allow 80/tcp", "allow 443/tcp", "allow 8448/tcp"]
OPEN = ["allow 22/tcp", "allow 80/tcp", "allow 443/tcp", "allow 8448/tcp"]


def state(v4, v6=None, rules=None):
    """A UfwState: chains in order (v6 defaults to v4's rules that match both families)."""
    v6 = [r for r in v4 if " from " not in r] if v6 is None else v6
    shown = rules if rules is not None else list(dict.fromkeys([*v4, *v6]))
    return {"active": True, "incoming": "DROP", "rules": shown, "order": {"v4": v4, "v6": v6}}


def test_wanted_rules():
    assert wanted_rules(22, True, ("10.8.0.0/16", "2001:db8::/32")) == (TRUSTED, LIMITED)
    assert wanted_rules(22, False, ("10.8.0.0/16",)) == ([], OPEN)  # no limit: nothing to be exempt from
    assert wanted_rules(2222, True, ()) == ([], ["limit 2222/tcp", *OPEN[1:]])


def test_a_fresh_host_gets_the_trusted_ranges_first():
    assert policy_commands(state([], []), TRUSTED, LIMITED) == [
        f"ufw prepend {TRUSTED[1]}", f"ufw prepend {TRUSTED[0]}", *(f"ufw {r}" for r in LIMITED)]


def test_allow_becomes_limit_in_place_and_nothing_is_deleted():
    # ufw answers "Rule updated" to `ufw limit 22/tcp` while `allow 22/tcp` exists: the rule keeps
    # its place and SSH is never closed; a `ufw delete allow 22/tcp` afterwards would find nothing.
    assert policy_commands(state(OPEN), [], LIMITED) == ["ufw limit 22/tcp"]
    assert policy_commands(state(OPEN), TRUSTED[:1], LIMITED) == [f"ufw prepend {TRUSTED[0]}", "ufw limit 22/tcp"]
    # and back: the limit off drops the trusted rules after SSH is allowed for everyone
    assert policy_commands(state([TRUSTED[0], *LIMITED]), [], OPEN) == ["ufw allow 22/tcp",
                                                                         f"ufw delete {TRUSTED[0]}"]


def test_a_converged_host_needs_no_command():
    converged = state([TRUSTED[0], *LIMITED], [TRUSTED[1], *LIMITED])
    assert converged["rules"] == [TRUSTED[0], *LIMITED, TRUSTED[1]]  # `ufw show added`'s order
    assert policy_commands(converged, TRUSTED, LIMITED) == []


def test_drift_is_repaired():
    # a trusted rule deleted
    assert policy_commands(state(LIMITED, [TRUSTED[1], *LIMITED]), TRUSTED, LIMITED) == [f"ufw prepend {TRUSTED[0]}"]
    # a trusted rule behind the limit (re-added with `ufw allow`): it would never match
    late = state([*LIMITED, TRUSTED[0]], [TRUSTED[1], *LIMITED])
    assert misplaced(late["order"], TRUSTED) == [TRUSTED[0]]
    assert policy_commands(late, TRUSTED, LIMITED) == [f"ufw delete {TRUSTED[0]}", f"ufw prepend {TRUSTED[0]}"]
    late6 = state([TRUSTED[0], *LIMITED], [*LIMITED, TRUSTED[1]])
    assert policy_commands(late6, TRUSTED, LIMITED) == [f"ufw delete {TRUSTED[1]}", f"ufw prepend {TRUSTED[1]}"]
    # the limit deleted: appended, which puts it behind the trusted rules
    assert policy_commands(state([TRUSTED[0], *LIMITED[1:]], [TRUSTED[1], *LIMITED[1:]]), TRUSTED, LIMITED) == [
        "ufw limit 22/tcp"]
    # a trusted range denied instead: deleted, then allowed at the top
    denied = "deny from 10.8.0.0/16 to any port 22 proto tcp"
    assert policy_commands(state([denied, *LIMITED], [TRUSTED[1], *LIMITED]), TRUSTED, LIMITED) == [
        f"ufw delete {denied}", f"ufw prepend {TRUSTED[0]}"]
    # a rule of someone else's, wherever it is, goes; after what federate wants is in place
    assert policy_commands(state(["allow 3306/tcp", TRUSTED[0], *LIMITED], [TRUSTED[1], *LIMITED]),
                           TRUSTED, LIMITED) == [f"ufw delete {TRUSTED[0]}", f"ufw prepend {TRUSTED[0]}",
                                                 "ufw delete allow 3306/tcp"]


def test_ufw_state_reads_rules_and_their_order():
    output = ["Status: active", 'DEFAULT_INPUT_POLICY="DROP"',
              "Added user rules (see 'ufw status' for running firewall):",
              f"ufw {TRUSTED[0]}", "ufw limit 22/tcp", "ufw allow 80/tcp", f"ufw {TRUSTED[1]}",
              "user allow tcp 22 0.0.0.0/0 any 10.8.0.0/16 in", "user limit tcp 22 0.0.0.0/0 any 0.0.0.0/0 in",
              "user allow tcp 80 0.0.0.0/0 any 0.0.0.0/0 in_eth0",
              "user6 allow tcp 22 ::/0 any 2001:db8::/32 in", "user6 limit tcp 22 ::/0 any ::/0 in"]
    got = UfwState().process(output)
    assert got["active"] and got["incoming"] == "DROP"
    assert got["rules"] == [TRUSTED[0], "limit 22/tcp", "allow 80/tcp", TRUSTED[1]]
    assert got["order"] == {"v4": [TRUSTED[0], "limit 22/tcp", None], "v6": [TRUSTED[1], "limit 22/tcp"]}
    assert rule_of_tuple("allow tcp 22 0.0.0.0/0 any 203.0.113.7 in") == \
        "allow from 203.0.113.7 to any port 22 proto tcp"
    assert rule_of_tuple("allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in comment=6869") is None
    assert UfwState.default()["order"] == {"v4": [], "v6": []}


# Each tuple of ufw's rules files and what `ufw show added` printed for it (ufw 0.36 on Debian 12):
# None where ufw is asked (`ufw show added`) because federate cannot write the rule's form.
SHOWN = {
    "allow tcp 22 0.0.0.0/0 any 10.105.177.1 in": "allow from 10.105.177.1 to any port 22 proto tcp",
    "limit tcp 22 0.0.0.0/0 any 0.0.0.0/0 in": "limit 22/tcp",
    "allow tcp 8448 ::/0 any ::/0 in": "allow 8448/tcp",
    "allow tcp 9000 10.105.177.11 any 10.1.2.3 in": "allow from 10.1.2.3 to 10.105.177.11 port 9000 proto tcp",
    "allow tcp 9001 fd00::2 any fd00::1 in": "allow from fd00::1 to fd00::2 port 9001 proto tcp",
    "allow tcp 9002 10.105.177.11 any 0.0.0.0/0 in": "allow to 10.105.177.11 port 9002 proto tcp",
    "allow any 9003 0.0.0.0/0 any 0.0.0.0/0 in": None,  # shown as `allow 9003`
    "allow tcp 9004 0.0.0.0/0 any 0.0.0.0/0 in_eth0": None,  # `allow in on eth0 to any port 9004 proto tcp`
    "allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in comment=6869": None,
    "allow tcp 8000:8010 0.0.0.0/0 any 0.0.0.0/0 in": None,
}


@pytest.mark.parametrize("rule_tuple", SHOWN)
def test_rules_are_read_from_the_rules_files_in_ufws_own_form(rule_tuple):
    assert rule_of_tuple(rule_tuple) == SHOWN[rule_tuple]
    # the command's awk asks ufw exactly for the tuples rule_of_tuple cannot read
    odd = subprocess.run(["awk", f"{ODD_SHAPE} {{ odd = 1 }} END {{ exit !odd }}"], input=f"user {rule_tuple}\n",
                         text=True).returncode == 0
    assert odd == (SHOWN[rule_tuple] is None)


def test_ufw_state_without_show_added_derives_the_rules_once_each():
    output = ["Status: active", 'DEFAULT_INPUT_POLICY="DROP"',
              "user allow tcp 22 0.0.0.0/0 any 10.8.0.0/16 in", "user limit tcp 22 0.0.0.0/0 any 0.0.0.0/0 in",
              "user allow tcp 80 0.0.0.0/0 any 0.0.0.0/0 in",
              "user6 allow tcp 22 ::/0 any 2001:db8::/32 in", "user6 limit tcp 22 ::/0 any ::/0 in",
              "user6 allow tcp 80 ::/0 any ::/0 in"]
    got = UfwState().process(output)
    assert got["rules"] == [TRUSTED[0], "limit 22/tcp", "allow 80/tcp", TRUSTED[1]]
    assert policy_commands(got, TRUSTED, ["limit 22/tcp", "allow 80/tcp"]) == []
    assert not UfwState().process(["Status: inactive"])["active"]


# --- nftables ------------------------------------------------------------------------------------

def input_rules(conf: str) -> list[str]:
    chain = conf.split("chain input {")[1].split("}\n")[0]
    return [line.strip() for line in chain.splitlines() if line.strip() and not line.strip().startswith(("#", "type"))]


def test_nftables_limits_new_ssh_connections_per_source_except_trusted():
    conf = nftables.render_nftables_conf(2222, True, ("10.8.0.0/16", "203.0.113.7", "2001:db8::/32"))
    rules = input_rules(conf)
    assert rules[:4] == ['iifname "lo" accept', "ct state established,related accept", "ct state invalid drop",
                         "meta l4proto { icmp, ipv6-icmp } accept"]  # established sessions never reach the limit
    assert rules[4:] == [
        "tcp dport 2222 ip saddr { 10.8.0.0/16, 203.0.113.7 } accept",
        "tcp dport 2222 ip6 saddr { 2001:db8::/32 } accept",
        "tcp dport 2222 ct state new update @ssh_meter4 { ip saddr limit rate over 10/minute burst 5 packets }"
        " reject with tcp reset",
        "tcp dport 2222 ct state new update @ssh_meter6 { ip6 saddr and ffff:ffff:ffff:ffff:: limit rate over"
        " 10/minute burst 5 packets } reject with tcp reset",
        "tcp dport 2222 accept", "tcp dport { 80, 443, 8448 } accept"]
    for family in ("ipv4_addr", "ipv6_addr"):
        assert f"type {family}\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout 1m\n" in conf


def test_nftables_without_trusted_ranges_or_without_the_limit():
    limited = input_rules(nftables.render_nftables_conf(22, True, ()))
    assert not [r for r in limited if "saddr {" in r] and "tcp dport 22 accept" in limited
    assert sum("@ssh_meter" in r for r in limited) == 2
    unlimited = nftables.render_nftables_conf(22, False, ("10.8.0.0/16",))
    assert "ssh_meter" not in unlimited and "10.8.0.0/16" not in unlimited
    assert "tcp dport 22 accept" in input_rules(unlimited)


def test_nftables_drift_check_ignores_the_meters_contents():
    command = nftables.NftablesLive().command("/etc/nftables.conf")
    assert command.count("nft -t list table inet federate") == 2


# --- the lab -------------------------------------------------------------------------------------

def test_the_lab_trusts_its_controller(tmp_path):
    hosts = topology.inventory_hosts(
        topology.load_topology(None), {"hs1": "10.1.2.11", "hs2": "10.1.2.12"}, ssh_key=tmp_path / "k",
        known_hosts=tmp_path / "known_hosts", bridge_ip="10.1.2.1", subnet="10.1.2.0/24", secrets_dir=tmp_path)
    for name, data in hosts:
        assert data["ssh"] == {"rate_limit": True, "trusted_ranges": ["10.1.2.1"]}, name
        assert host_settings(name, data).ssh == Ssh(True, ("10.1.2.1",))
