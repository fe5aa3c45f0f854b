"""`federate verify`: each homeserver's check report judged against what its settings promise."""

from __future__ import annotations

import json

import pytest

from federate import cli
from federate.checker import policy as verify
from federate.checker.hints import hint
from federate.settings import inventory_settings

BASE = {"synapse_version": "1.163.2", "proxy": "nginx", "firewall": "ufw", "database": "sqlite",
        "tls": {"mode": "acme", "acme_directory": "https://acme.test/dir"}}


def settings(*homeservers, **extra):
    return inventory_settings([("hs1", {**BASE, "homeservers": list(homeservers), **extra})])


def report(server_name: str, ok: bool, hints=()) -> dict:
    checks = {"AllChecksOK": ok}
    return {"ServerName": server_name, "FederationOK": ok, "Error": "",
            "ConnectionReports": {"10.1.2.11:443": {"Checks": checks, "Errors": []}},
            "ConnectionErrors": {}, "Version": {"name": "Synapse", "version": "1.163.2"},
            "Hints": list(hints)}


@pytest.fixture
def answers(monkeypatch):
    """server name -> the report check_server gives; the options it was called with are kept."""
    given, calls = {}, []

    def fake_check(server_name, **options):
        calls.append((server_name, options))
        return given[server_name]

    monkeypatch.setattr(verify, "check_server", fake_check)
    return given, calls


def test_open_server_must_federate(answers):
    given, _ = answers
    given["a.test"] = report("a.test", True)
    [result] = verify.verify_settings(settings({"server_name": "a.test"}))
    assert (result.expected, result.ok) == ("open", True)
    assert result.summary == "federation OK: Synapse 1.163.2 at 10.1.2.11:443"

    closed_port = hint("port-closed", "error", addr="10.1.2.11:8448", message="refused", port=8448)
    given["a.test"] = report("a.test", False, [closed_port, hint("join-401", "info")])
    [result] = verify.verify_settings(settings({"server_name": "a.test"}))
    assert not result.ok and result.summary.startswith("federation FAILED: connection: 10.1.2.11:8448")
    assert [h["name"] for h in result.hints] == ["port-closed"]  # info hints are not failures


def test_closed_internal_server_must_not_answer(answers):
    given, _ = answers
    internal = {"server_name": "i.test", "profile": "internal"}
    given["i.test"] = report("i.test", False, [hint("reverse-proxy", "error", addr="x", message="HTTP 404")])
    [result] = verify.verify_settings(settings(internal))
    assert (result.expected, result.ok) == ("closed", True)
    assert result.summary.startswith("closed as expected: no federation answer (keys: x: HTTP 404")
    assert result.hints == []

    given["i.test"] = report("i.test", True)
    [result] = verify.verify_settings(settings(internal))
    assert not result.ok and result.summary.startswith("unexpectedly open: Synapse 1.163.2 at 10.1.2.11:443")
    assert [h["name"] for h in result.hints] == ["unexpectedly-open"]


def test_whitelisted_internal_server_must_be_reachable(answers):
    given, _ = answers
    given["i.test"] = report("i.test", True)
    [result] = verify.verify_settings(settings(INTERNAL))
    assert (result.expected, result.ok) == ("whitelist", True)
    assert "Synapse's policy allows only a.test, b.test" in result.summary


INTERNAL = {"server_name": "i.test", "profile": "internal", "federation_whitelist": ["a.test", "b.test"],
            "federation_allow_addresses": ["192.0.2.0/24"]}


def forbidden_report(valid_certificate: bool = True) -> dict:
    """What the controller sees of an internal server whose proxy admits only its partners."""
    result = report("i.test", False)
    result["ConnectionReports"]["10.1.2.11:443"] = {
        "Checks": {"AllChecksOK": False, "ValidCertificates": valid_certificate},
        "Errors": [{"Message": "GET /_matrix/key/v2/server answered HTTP 403", "Status": 403}]}
    return result


def test_internal_server_locked_to_its_partners_passes_with_a_403_from_elsewhere(answers):
    given, _ = answers
    given["i.test"] = forbidden_report()
    [result] = verify.verify_settings(settings(INTERNAL))
    assert result.ok and "admits only its partners' addresses: the proxy answers 403 here" in result.summary


def test_a_403_does_not_excuse_a_bad_certificate_or_an_open_server(answers):
    given, _ = answers
    given["i.test"] = forbidden_report(valid_certificate=False)
    [result] = verify.verify_settings(settings(INTERNAL))
    assert not result.ok
    given["a.test"] = forbidden_report()  # an open server must answer everyone
    given["a.test"]["ServerName"] = "a.test"
    [result] = verify.verify_settings(settings({"server_name": "a.test"}))
    assert not result.ok


def test_options_come_from_each_host_unless_given(answers):
    given, calls = answers
    given["a.test"] = report("a.test", True)
    inventory = settings({"server_name": "a.test"},
                         verify={"dns_server": "10.1.2.1", "ca_file": "/lab/ca.pem", "timeout": 3})
    verify.verify_settings(inventory)
    verify.verify_settings(inventory, dns_server="127.0.0.53", ca_file="/other.pem", timeout=1)
    assert [options for _, options in calls] == [
        {"dns_server": "10.1.2.1", "ca_file": "/lab/ca.pem", "timeout": 3.0},
        {"dns_server": "127.0.0.53", "ca_file": "/other.pem", "timeout": 1}]


def test_private_address_is_no_warning_inside_the_hosts_own_ip_range_whitelist(answers):
    given, _ = answers
    private = [hint("private-address", "warning", addr=f"{a}:443") for a in ("10.1.2.11", "192.168.1.5")]
    given["a.test"] = report("a.test", False, private)
    [result] = verify.verify_settings(settings({"server_name": "a.test", "ip_range_whitelist": ["10.1.2.0/24"]}))
    assert [h["problem"].split(" ")[0] for h in result.hints] == ["192.168.1.5:443"]


def test_a_check_that_raises_is_a_failure(monkeypatch):
    def broken(server_name, **options):
        raise RuntimeError("resolver exploded")

    monkeypatch.setattr(verify, "check_server", broken)
    [result] = verify.verify_settings(settings({"server_name": "i.test", "profile": "internal"}))
    assert not result.ok and "resolver exploded" in result.summary


def test_command_exit_status_and_json(answers, tmp_path, capsys):
    given, _ = answers
    inventory = tmp_path / "inventory.py"
    inventory.write_text("hosts = [('hs1', " + repr({**BASE, "homeservers": [
        {"server_name": "a.test"}, {"server_name": "i.test", "profile": "internal"}]}) + ")]\n")
    given["a.test"], given["i.test"] = report("a.test", True), report("i.test", False)
    assert cli.main(["verify", str(inventory)]) == 0
    out = capsys.readouterr().out
    assert "[PASS] a.test on hs1, expected open" in out and "2 as expected, 0 failed" in out

    given["i.test"] = report("i.test", True)
    assert cli.main(["verify", str(inventory), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False
    assert [(r["server_name"], r["expected"], r["ok"]) for r in document["results"]] == [
        ("a.test", "open", True), ("i.test", "closed", False)]


def test_errors_beside_a_working_federation_are_shown_but_do_not_fail(answers):
    given, _ = answers
    invalid = hint("well-known-invalid", "error", server_name="a.test", result="well-known is not valid JSON")
    given["a.test"] = report("a.test", True, [invalid])
    [result] = verify.verify_settings(settings({"server_name": "a.test"}))
    assert result.ok and [h["name"] for h in result.hints] == ["well-known-invalid"]
    assert result.summary.endswith("; but well-known: https://a.test/.well-known/matrix/server is unusable: "
                                   "well-known is not valid JSON. Other servers ignore it and fall back to "
                                   "SRV records and port 8448.")


def test_help_names_the_commands_and_no_implementation_notes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert all(command in text for command in ("check", "verify", "schema", "lab", "prove"))
    assert "register" not in text and "build_parser" not in text
