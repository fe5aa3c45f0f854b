"""Metrics (issue 13, item 4): the `metrics` setting, Synapse's listener, the firewall openings for the
scrapers. Observed on lab hosts in tests/lab/test_destinations.py."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from federate.deploy import synapse
from federate.deploy.firewall import metrics_openings, nftables, policy_summary
from federate.deploy.firewall.ufw import metrics_rules, policy_commands, wanted_rules
from federate.settings import Metrics, SettingsError, host_settings


def settings(*metrics, **extra):
    """A host whose homeservers a.test, b.test, ... have these `metrics` (None: off)."""
    homeservers = [{"server_name": f"{chr(97 + i)}.test", **({} if m is None else {"metrics": m})}
                   for i, m in enumerate(metrics)]
    return host_settings("h1", {"database": "sqlite", "homeservers": homeservers, **extra})


def refused(field: str, *metrics, **extra) -> str:
    with pytest.raises(SettingsError) as error:
        settings(*metrics, **extra)
    assert error.value.field == field, str(error.value)
    return error.value.problem


# --- settings ------------------------------------------------------------------------------------

def test_off_by_default_and_loopback_on_9000_when_on():
    assert settings(None).homeservers[0].metrics is None
    assert settings({}).homeservers[0].metrics == Metrics("127.0.0.1", 9000, ())


def test_ports_are_assigned_around_every_other_port_of_the_host():
    hss = host_settings("h1", {"database": "sqlite", "homeservers": [
        {"server_name": "a.test", "port": 9000, "metrics": {}},
        {"server_name": "b.test", "metrics": {"port": 9001}},
        {"server_name": "c.test", "metrics": {}}]}).homeservers
    assert [(hs.port, hs.metrics.port) for hs in hss] == [(9000, 9002), (8008, 9001), (8009, 9003)]


@pytest.mark.parametrize("port, problem", [
    (8008, "8008 is already used by homeservers[0].port"),
    (8448, "8448 is used by the proxy or SSH"),
    (80, "must be 1024-65535, got 80"),
])
def test_a_port_taken_on_the_host_is_refused(port, problem):
    assert refused("homeservers[0].metrics.port", {"port": port}) == problem


def test_two_homeservers_cannot_share_a_metrics_port():
    assert refused("homeservers[1].metrics.port", {"port": 9100}, {"port": 9100}) == \
        "9100 is already used by homeservers[0].metrics.port"


def test_a_private_address_needs_scrapers_and_gets_them_normalised():
    assert "is required with bind 10.0.0.2" in refused("homeservers[0].metrics.scrapers", {"bind": "10.0.0.2"})
    metrics = settings({"bind": "10.0.0.2", "scrapers": ["10.0.0.9/32", "10.0.1.0/24", "10.0.0.9"]}
                       ).homeservers[0].metrics
    assert metrics == Metrics("10.0.0.2", 9000, ("10.0.0.9", "10.0.1.0/24"))
    # the shared address space of overlay VPNs is not on the internet either
    assert settings({"bind": "100.101.1.2", "scrapers": ["100.101.1.3"]}).homeservers[0].metrics.bind == "100.101.1.2"
    assert settings({"bind": "fd00::2", "scrapers": ["fd00::9"]}).homeservers[0].metrics.url == \
        "http://[fd00::2]:9000/_synapse/metrics"


@pytest.mark.parametrize("bind", ["192.0.2.300", "metrics.example.com", ""])
def test_bind_must_be_an_ip_address(bind):
    assert refused("homeservers[0].metrics.bind", {"bind": bind}).startswith("must be an IP address")


@pytest.mark.parametrize("bind", ["1.2.3.4", "0.0.0.0", "::", "2a01:4f8::1", "169.254.1.1"])
def test_never_on_the_internet(bind):
    problem = refused("homeservers[0].metrics.bind", {"bind": bind, "scrapers": ["10.0.0.9"]})
    assert problem.startswith(f"{bind} is not a private address")


def test_scrapers_make_no_sense_on_loopback_nor_everyone_nor_the_other_family():
    assert "cannot be scraped from elsewhere" in refused("homeservers[0].metrics.scrapers",
                                                          {"scrapers": ["10.0.0.9"]})
    assert refused("homeservers[0].metrics.scrapers[0]", {"bind": "10.0.0.2", "scrapers": ["0.0.0.0/0"]})
    assert refused("homeservers[0].metrics.scrapers[1]", {"bind": "10.0.0.2", "scrapers": ["10.0.0.9", "fd00::9"]})
    assert refused("homeservers[0].metrics.scrapers[0]", {"bind": "10.0.0.2", "scrapers": ["prometheus"]})


def test_bad_shapes_name_the_field():
    assert refused("homeservers[0].metrics", True).startswith("must be a mapping such as {'bind': '127.0.0.1'}")
    assert "did you mean 'scrapers'" in refused("homeservers[0].metrics.scraper", {"scraper": ["10.0.0.9"]})
    assert refused("homeservers[0].metrics.port", {"port": "9000"}) == "must be a port number, got '9000'"
    with pytest.raises(SettingsError, match=r"homeservers\[0\]\.synapse_extra\.enable_metrics: is managed"):
        host_settings("h1", {"homeservers": [{"server_name": "a.test", "synapse_extra": {"enable_metrics": True}}]})


# --- homeserver.yaml ---------------------------------------------------------------------------------

def test_homeserver_yaml_has_the_metrics_listener_only_when_on():
    s = settings(None, {}, {"bind": "10.0.0.2", "scrapers": ["10.0.0.9"]})
    off, loopback, private = (yaml.safe_load(synapse.render_homeserver_yaml(s, hs)) for hs in s.homeservers)
    assert "enable_metrics" not in off and [entry["type"] for entry in off["listeners"]] == ["http"]
    assert loopback["enable_metrics"] is True
    assert loopback["listeners"][1] == {"port": 9000, "bind_addresses": ["127.0.0.1"], "type": "metrics", "tls": False}
    assert private["listeners"][1] == {"port": 9001, "bind_addresses": ["10.0.0.2"], "type": "metrics", "tls": False}


# --- the firewall ------------------------------------------------------------------------------------

def test_only_a_private_listener_opens_the_firewall_and_only_to_its_scrapers():
    s = settings({}, {"bind": "10.0.0.2", "scrapers": ["10.0.0.9", "10.0.1.0/24"]})
    [opening] = metrics_openings(s)
    assert (opening.bind, opening.port, opening.scrapers) == ("10.0.0.2", 9001, ("10.0.0.9", "10.0.1.0/24"))
    assert policy_summary(s) == "allow only SSH (22), 80, 443, 8448, 10.0.0.2:9001 from 10.0.0.9, 10.0.1.0/24"
    assert policy_summary(settings({})) == "allow only SSH (22), 80, 443, 8448"  # loopback: no opening


def test_ufw_rules_for_the_scrapers_come_and_go():
    s = settings({"bind": "10.0.0.2", "scrapers": ["10.0.0.9", "10.0.1.0/24"]})
    rules = metrics_rules(metrics_openings(s))
    assert rules == ["allow from 10.0.0.9 to 10.0.0.2 port 9000 proto tcp",
                     "allow from 10.0.1.0/24 to 10.0.0.2 port 9000 proto tcp"]
    first, base = wanted_rules(22)
    fresh = {"active": True, "incoming": "DROP", "rules": base, "order": {"v4": base, "v6": base}}
    assert policy_commands(fresh, first, base + rules) == [f"ufw {rule}" for rule in rules]
    converged = {**fresh, "rules": base + rules}
    assert policy_commands(converged, first, base + rules) == []
    assert policy_commands(converged, first, base) == [f"ufw delete {rule}" for rule in rules]  # metrics off


def test_nftables_accepts_the_scrapers_to_the_listener_only():
    s = settings({"bind": "10.0.0.2", "scrapers": ["10.0.0.9", "10.0.1.0/24"]},
                 {"bind": "fd00::2", "scrapers": ["fd00::9"]})
    conf = nftables.render_nftables_conf(22, True, (), metrics_openings(s))
    assert "\t\tip saddr { 10.0.0.9, 10.0.1.0/24 } ip daddr 10.0.0.2 tcp dport 9000 accept\n" in conf
    assert "\t\tip6 saddr { fd00::9 } ip6 daddr fd00::2 tcp dport 9001 accept\n" in conf
    assert "9000" not in nftables.render_nftables_conf(22, True, ())
    if shutil.which("nft"):  # nft's own parser, where the controller has it
        check = subprocess.run(["nft", "-c", "-f", "-"], input=conf, text=True, capture_output=True)
        assert check.returncode == 0 or "Operation not permitted" in check.stderr, check.stderr


def test_a_private_bind_must_be_an_address_of_the_host(monkeypatch):
    """Refused while planning (Synapse could not start); the host's addresses are asked only then."""
    asked = []

    class Host:
        @staticmethod
        def get_fact(fact):
            asked.append(fact.__name__)
            return {"eth0": ["10.0.0.2"], "lo": ["127.0.0.1"]} if fact.__name__ == "Ipv4Addrs" else {}

    monkeypatch.setattr(synapse, "host", Host)
    assert synapse.metrics_bind_problem(settings({}, None)) is None and asked == []  # loopback: no fact
    assert synapse.metrics_bind_problem(settings({"bind": "10.0.0.2", "scrapers": ["10.0.0.9"]})) is None
    assert synapse.metrics_bind_problem(settings(None, {"bind": "10.0.0.3", "scrapers": ["10.0.0.9"]})) == (
        "host h1: homeservers[1].metrics.bind: 10.0.0.3 is not an address of this host (it has 10.0.0.2, 127.0.0.1)")
