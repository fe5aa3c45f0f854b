"""Issue (production variants), on a lab of its own: SQLite homeservers found through a delegation
host and through an SRV record, federating across hosts; zero-change re-run; switch refused.
The SRV homeserver uses provided certificates (made on the controller with the lab CA): uploaded
with tight modes, served as given, and a new certificate is one upload and one reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import issue_certificate, own_lab, open_ports, served_serial, with_provided_certificate
from federate.lab import prove
from federate.checker.report import check_server
from federate.lab.runner import assert_converged, changed_names, run_deploy, write_inventory

pytestmark = pytest.mark.lab

TOPOLOGY = {
    "hosts": {
        "hs1": {"homeservers": [{"server_name": "gamma.test", "public_host": "matrix.gamma.test",
                                 "discovery": "delegated", "users": [{"localpart": "gina"}]}],
                "host_data": {"database": "sqlite"}},
        "hs2": {"homeservers": [{"server_name": "delta.test", "public_host": "matrix.delta.test",
                                 "discovery": "srv", "users": [{"localpart": "dan"}]}],
                "host_data": {"database": "sqlite"}},
        "web": {"homeservers": [], "host_data": {"delegations": [{"server_name": "gamma.test"}]}},
    },
    "extra_names": {"gamma.test": "web"},  # the bare domain is the plain web host's
    "srv": [{"name": "_matrix-fed._tcp.delta.test", "target": "matrix.delta.test", "port": 8448}],
}


PROVIDED_NAMES = ["delta.test", "matrix.delta.test"]  # SRV: the certificate covers the server name too


@pytest.fixture(scope="module")
def variant(tmp_path_factory):
    directory = tmp_path_factory.mktemp("provided")
    with own_lab("d", TOPOLOGY) as session:
        info = session.info
        info["session"], info["provided_dir"] = session, directory
        files, info["provided_serial"] = issue_certificate(session.lab, directory, PROVIDED_NAMES)
        info["inventory"] = with_provided_certificate(info["inventory"], directory, "hs2", files, "delta.test")
        result = run_deploy(info["inventory"])
        assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
        yield info, result


def test_deploy_prints_the_dns_records_to_create(variant):
    info, result = variant
    output = result.stdout + result.stderr
    web, hs2 = info["hosts"]["web"]["address"], info["hosts"]["hs2"]["address"]
    assert f"DNS record needed: gamma.test. IN A {web}" in output
    assert f"DNS record needed: matrix.delta.test. IN A {hs2}" in output
    assert "DNS record needed: _matrix-fed._tcp.delta.test. IN SRV 10 0 8448 matrix.delta.test." in output


def test_delegation_host_leads_to_the_api_host(variant):
    info, _ = variant
    report = check_server("gamma.test", dns_server=info["dns"], ca_file=info["ca_file"])
    assert report["FederationOK"], report.get("Error") or report.get("Hints")
    assert report["WellKnownResult"]["m.server"] == "matrix.gamma.test:443"


def test_srv_record_alone_is_enough(variant):
    info, _ = variant
    report = check_server("delta.test", dns_server=info["dns"], ca_file=info["ca_file"])
    assert report["FederationOK"], report.get("Error") or report.get("Hints")
    assert not report["WellKnownResult"].get("m.server")  # no server well-known at all
    assert report["DNSResult"]["SRVRecords"], report["DNSResult"]


def test_room_across_hosts_through_both_discoveries(variant):
    info, _ = variant
    check = prove.federation_room_check(prove.load_settings(info["inventory"]), info["dns"], info["ca_file"], 2)
    assert check.ok, check.line()


def test_delegation_host_runs_no_synapse_and_opens_only_web_ports(variant):
    info, _ = variant
    assert open_ports(info["hosts"]["web"]["address"]) == {22, 80, 443}


def test_second_run_changes_nothing(variant):
    info, _ = variant
    info["session"].noop_rerun()


def test_switching_sqlite_to_postgres_is_refused(variant, tmp_path):
    info, _ = variant

    def to_postgres(hosts):
        dict(hosts)["hs2"]["database"] = "postgres"
    result = run_deploy(write_inventory(tmp_path / "inventory.py", info["inventory"], to_postgres))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "host hs2: homeservers[0] (delta.test): database: this homeserver has a SQLite database" in output
    assert "Starting operation" not in output and "Traceback" not in output


def test_provided_certificate_is_served_and_kept_private(variant):
    info, _ = variant
    for name, port in [("matrix.delta.test", 8448), ("matrix.delta.test", 443), ("delta.test", 443)]:
        assert served_serial(info, name, port) == info["provided_serial"], (name, port)
    modes = info["session"].ssh("hs2", "stat -c '%n %U:%G %a' /etc/federate/tls/delta.test/*").stdout.split("\n")
    assert "/etc/federate/tls/delta.test/fullchain.pem root:root 644" in modes
    assert "/etc/federate/tls/delta.test/privkey.pem root:root 600" in modes
    assert info["session"].ssh("hs2", "dpkg -s certbot", check=False).returncode != 0  # no ACME client needed


def test_new_provided_certificate_is_one_upload_and_one_reload(variant):
    info, _ = variant
    main_pid = "systemctl show -p MainPID --value nginx"
    nginx_before = info["session"].ssh("hs2", main_pid).stdout.strip()
    _, new_serial = issue_certificate(info["session"].lab, info["provided_dir"], PROVIDED_NAMES)
    result = run_deploy(info["inventory"], "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert changed_names(result, "hs2") == {"delta.test: proxy reload owed for new files", "delta.test: certificate",
                                         "delta.test: private key", "nginx: reload on change", "nginx: reload done"}
    assert not changed_names(result, "hs1") and not changed_names(result, "web")
    assert served_serial(info, "matrix.delta.test", 8448) == new_serial
    assert info["session"].ssh("hs2", main_pid).stdout.strip() == nginx_before  # reloaded, not restarted
    assert_converged(info["inventory"])


def test_a_provided_key_never_appears_in_output(variant):
    """Rolling the certificate uploads a new private key: not in --diff, -vvv or --json output."""
    info, _ = variant
    for flags in (("--diff",), ("-vvv",), ("--json",)):
        files, serial = issue_certificate(info["session"].lab, info["provided_dir"], PROVIDED_NAMES)
        result = run_deploy(info["inventory"], *flags)
        assert result.returncode == 0, result.stderr[-3000:]
        assert served_serial(info, "matrix.delta.test", 8448) == serial  # the new key was uploaded
        key_lines = [line for line in Path(files["key"]).read_text().splitlines() if "PRIVATE KEY" not in line]
        text = result.stdout + result.stderr
        assert len(key_lines) >= 2 and not [line for line in key_lines if line in text], flags
    modes = info["session"].ssh("hs2", "stat -c '%U:%G %a' /etc/federate/tls/delta.test/privkey.pem").stdout
    assert modes.strip() == "root:root 600"
    assert_converged(info["inventory"])
