"""Issue: `federate verify` and the checker proven on the lab.

Healthy servers pass; each deliberately broken set-up fails with the right field and hint; the
check at the end of every deploy passes on a converged lab (0 changes) and fails the deploy when
something is wrong that the deploy does not repair. The `z` makes this file run after the other
tests of the shared lab; every break is undone in a `finally`, and the last test proves that the
lab is converged again.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from federate.checker.report import check_server
from federate.lab import pki
from federate.lab.runner import REPO_ROOT, assert_converged, run_deploy, write_inventory
from federate.checker.http import https_get

pytestmark = pytest.mark.lab

FEDERATE = str(Path(sys.executable).parent / "federate")
BETA_SITE = "/etc/nginx/conf.d/federate-beta.test.conf"
BACKUP = "/root/federate-beta.test.conf.before-test"
EXPECTED = {"alpha.test": "open", "internal.alpha.test": "whitelist", "beta.test": "open"}
HOSTS = {"alpha.test": "hs1", "internal.alpha.test": "hs1", "beta.test": "hs2"}


def verify_cli(inventory: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FEDERATE, "verify", inventory, *args], cwd=REPO_ROOT, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=300)


def verify_json(inventory: str, *args: str) -> tuple[int, dict]:
    """Exit status and the results by server name."""
    result = verify_cli(inventory, "--json", *args)
    document = json.loads(result.stdout)
    assert document["ok"] == (result.returncode == 0)
    return result.returncode, {r["server_name"]: r for r in document["results"]}


def hint_names(result: dict) -> list[str]:
    return [h["name"] for h in result["hints"]]


def check(info: dict, name: str, **options) -> dict:
    return check_server(name, **{"dns_server": info["dns"], "ca_file": info["ca_file"], **options})


def wait_well_known(info: dict, name: str, wanted, seconds: float = 10.0):
    """nginx's reload returns before its new workers answer: poll until `wanted(reply)` holds."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            reply = https_get(name, 443, "/.well-known/matrix/server", ca_file=info["ca_file"],
                              dns_server=info["dns"], timeout=2)
            if wanted(reply):
                return reply
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{name}'s well-known did not change"
        time.sleep(0.2)


def beta_healthy(info: dict, seconds: float = 15.0):
    deadline = time.monotonic() + seconds
    while not check(info, "beta.test", timeout=3)["FederationOK"]:
        assert time.monotonic() < deadline, "beta.test did not recover"
        time.sleep(0.5)


@pytest.fixture
def beta_site(deployed):
    """Edit beta.test's nginx site in a test; the exact file is put back afterwards."""
    deployed.ssh("hs2", f"cp -p {BETA_SITE} {BACKUP}")

    def edit(sed: str):
        deployed.ssh("hs2", f"sed -i {shlex.quote(sed)} {BETA_SITE} && systemctl reload nginx")

    try:
        yield edit
    finally:
        deployed.ssh("hs2", f"mv {BACKUP} {BETA_SITE} && systemctl reload nginx")
        beta_healthy(deployed.info)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> str:
    """A CA nobody's certificate comes from (not the lab's)."""
    folder = tmp_path_factory.mktemp("other-ca")
    pki.make_ca("other", folder / "ca.pem", folder / "ca.key")
    return str(folder / "ca.pem")


# --- healthy ---------------------------------------------------------------------------------

def test_healthy_lab_passes_verify(deployed):
    result = verify_cli(deployed.inventory)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "federate verify: 3 homeservers on 2 hosts"
    assert lines[-1] == "3 as expected, 0 failed"
    assert any(line.startswith("  [PASS] alpha.test on hs1, expected open: federation OK: Synapse ")
               for line in lines)
    assert any(line.startswith("  [PASS] beta.test on hs2, expected open: federation OK: Synapse ")
               for line in lines)
    internal = next(line for line in lines if "internal.alpha.test" in line)
    # the controller is no partner: the proxy's 403 is the lock, checked with a valid certificate
    assert internal.startswith("  [PASS] internal.alpha.test on hs1, expected whitelist: admits only its partners' "
                               f"addresses: the proxy answers 403 here at {deployed.address('hs1')}:443 (certificate valid)")
    assert internal.endswith("Synapse's policy allows only alpha.test")

    status, results = verify_json(deployed.inventory)
    assert status == 0
    assert {name: r["expected"] for name, r in results.items()} == EXPECTED
    assert all(r["ok"] and r["hints"] == [] for r in results.values())
    assert [name for name, r in results.items() if r["report"]["FederationOK"]] == ["alpha.test", "beta.test"]


def test_empty_whitelist_that_still_answers_is_unexpectedly_open(deployed, tmp_path):
    """Settings say 'no federation' but the live server (still whitelisting alpha.test, its proxy's
    address lock removed by hand) answers."""
    def close_internal(hosts):
        hosts[0][1]["homeservers"][1]["federation_whitelist"] = []

    site = "/etc/nginx/conf.d/federate-internal.alpha.test.conf"
    deployed.ssh("hs1", f"cp {site} /root/internal.before-test && sed -i '/allow /d; /deny all;/d' {site} "
                        "&& nginx -s reload && sleep 1")
    try:
        status, results = verify_json(write_inventory(tmp_path / "closed.py", deployed.inventory, close_internal))
        assert status == 1
        internal = results["internal.alpha.test"]
        assert (internal["expected"], internal["ok"]) == ("closed", False)
        assert internal["summary"].startswith("unexpectedly open: Synapse ")
        assert hint_names(internal) == ["unexpectedly-open"]
        assert results["alpha.test"]["ok"] and results["beta.test"]["ok"]
    finally:
        deployed.ssh("hs1", f"mv /root/internal.before-test {site} && nginx -s reload")


def test_closed_internal_server_is_verified_closed(deployed, tmp_path):
    """Deployed with an empty whitelist, the internal server answers no federation; the deploy's
    own check says so, and so does `federate verify`."""
    def close_internal(hosts):
        hosts[0][1]["homeservers"][1]["federation_whitelist"] = []

    closed = write_inventory(tmp_path / "closed.py", deployed.inventory, close_internal)
    try:
        deploy = run_deploy(closed)
        assert deploy.returncode == 0, deploy.stderr[-4000:]
        assert "[PASS] internal.alpha.test on hs1, expected closed: closed as expected" in deploy.stderr
        status, results = verify_json(closed)
        assert status == 0
        internal = results["internal.alpha.test"]
        assert internal["summary"].startswith("closed as expected: no federation answer")
        assert internal["report"]["FederationOK"] is False
    finally:
        restore = run_deploy(deployed.inventory)
        assert restore.returncode == 0, restore.stderr[-4000:]
    assert verify_json(deployed.inventory)[1]["internal.alpha.test"]["expected"] == "whitelist"


# --- broken on purpose -------------------------------------------------------------------------

def test_stopped_proxy_fails_with_a_connection_hint(deployed):
    deployed.ssh("hs2", "systemctl stop nginx")
    try:
        status, results = verify_json(deployed.inventory, "--timeout", "3")
        assert status == 1
        beta = results["beta.test"]
        assert not beta["ok"] and beta["summary"].startswith("federation FAILED: connection: ")
        assert beta["report"]["WellKnownResult"]["Problem"] == "missing"  # 443 refused too
        [(addr, error)] = beta["report"]["ConnectionErrors"].items()
        assert addr == f"{deployed.address('hs2')}:8448" and error["Kind"] == "refused"
        assert hint_names(beta)[:2] == ["port-closed", "no-delegation"]
        assert "ufw allow 8448/tcp" in beta["hints"][0]["fix"]
        assert results["alpha.test"]["ok"] and results["internal.alpha.test"]["ok"]
    finally:
        deployed.ssh("hs2", "systemctl start nginx")
        beta_healthy(deployed.info)


def test_api_host_instead_of_server_name(deployed):
    report = check(deployed.info, "matrix.alpha.test")
    assert report["FederationOK"] is False
    [connection] = report["ConnectionReports"].values()
    assert connection["Checks"]["MatchingServerName"] is False
    assert connection["Checks"]["ValidCertificates"] is True
    api_host = next(h for h in report["Hints"] if h["name"] == "api-host")
    assert api_host["problem"] == (f"you checked matrix.alpha.test but the keys at "
                                   f"{deployed.address('hs1')}:443 belong to alpha.test.")
    assert "`federate check alpha.test`" in api_host["fix"]


def test_untrusted_ca_fails_with_a_certificate_hint(deployed, other_ca):
    report = check(deployed.info, "beta.test", ca_file=other_ca)
    assert report["FederationOK"] is False
    assert [c["Checks"]["ValidCertificates"] for c in report["ConnectionReports"].values()] == [False]
    assert "certificate" in [h["name"] for h in report["Hints"]]

    status, results = verify_json(deployed.inventory, "--ca-file", other_ca)
    assert status == 1
    for name, result in results.items():
        assert not result["ok"], name
        certificate = next(h for h in result["hints"] if h["name"] == "certificate")
        assert "certificate is not valid" in certificate["problem"]
        assert all(not c["Checks"]["ValidCertificates"] for c in result["report"]["ConnectionReports"].values())


def test_closed_port_matters_only_where_federation_goes(deployed, beta_site):
    """beta.test's well-known sends federation to 443, so closing 8448 breaks nothing; without
    the well-known, federation falls back to 8448, and then the closed port breaks it."""
    info = deployed.info
    deployed.ssh("hs2", "ufw delete allow 8448/tcp")
    try:
        report = check(info, "beta.test", timeout=3)
        assert report["FederationOK"] and list(report["ConnectionReports"]) == [f"{deployed.address('hs2')}:443"]

        beta_site(r"/location = \/.well-known\/matrix\/server/,/^    }$/d")
        wait_well_known(info, "beta.test", lambda reply: reply.status == 404)
        status, results = verify_json(deployed.inventory, "--timeout", "3")
        assert status == 1
        beta = results["beta.test"]
        assert not beta["ok"]
        assert beta["report"]["ConnectionErrors"][f"{deployed.address('hs2')}:8448"]["Kind"] == "timeout"
        assert hint_names(beta)[:2] == ["port-closed", "no-delegation"]
        assert "no /.well-known/matrix/server (no well-known: HTTP 404)" in beta["hints"][1]["problem"]
    finally:
        deployed.ssh("hs2", "ufw allow 8448/tcp")


def test_wrong_well_known(deployed, beta_site):
    info = deployed.info
    # Another server's API host in m.server: the keys found there are alpha.test's.
    beta_site('s/"m.server":"beta.test:443"/"m.server":"matrix.alpha.test:443"/')
    wait_well_known(info, "beta.test", lambda reply: b"matrix.alpha.test" in reply.body)
    status, results = verify_json(deployed.inventory)
    assert status == 1
    beta = results["beta.test"]
    assert beta["report"]["WellKnownResult"]["m.server"] == "matrix.alpha.test:443"
    assert hint_names(beta)[0] == "api-host"
    assert "you checked beta.test but the keys at" in beta["hints"][0]["problem"]

    # Not JSON: remote servers ignore it and fall back to beta.test:8448, which works; verify
    # passes but shows the broken file.
    beta_site("s/return 200 '{\"m.server\":[^}]*}'/return 200 'not json'/")
    wait_well_known(info, "beta.test", lambda reply: reply.body == b"not json")
    result = verify_cli(deployed.inventory)
    assert result.returncode == 0, result.stdout
    beta_line = next(line for line in result.stdout.splitlines() if "beta.test on hs2" in line)
    assert "federation OK" in beta_line and "; but well-known: " in beta_line and "not valid JSON" in beta_line
    report = check(info, "beta.test")
    assert report["WellKnownResult"]["Problem"] == "invalid"
    assert list(report["ConnectionReports"]) == [f"{deployed.address('hs2')}:8448"]


# --- the check at the end of each deploy -------------------------------------------------------

def test_after_deploy_check_fails_the_deploy_it_cannot_repair(deployed, tmp_path, other_ca):
    def distrust(hosts):
        hosts[1][1]["verify"]["ca_file"] = other_ca

    untrusting = write_inventory(tmp_path / "untrusting.py", deployed.inventory, distrust)
    assert run_deploy(untrusting, "--dry").returncode == 0  # planning checks nothing
    failed = run_deploy(untrusting)
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "federation check failed on hs2 for beta.test:" in output
    assert "[FAIL] beta.test on hs2, expected open: federation FAILED: TLS: " in output
    assert "[PASS] alpha.test on hs1" in output  # hs1 trusts the lab CA and passes

    def switched_off(hosts):
        distrust(hosts)
        hosts[1][1]["verify"]["after_deploy"] = False

    quiet = run_deploy(write_inventory(tmp_path / "quiet.py", deployed.inventory, switched_off), "--json")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "beta.test on hs2" not in quiet.stderr


def test_converged_deploy_checks_federation_and_changes_nothing(deployed):
    """Last: every break above was undone; a normal run changes nothing and checks all servers."""
    result = assert_converged(deployed.inventory)
    for name, expected in EXPECTED.items():
        assert f"[PASS] {name} on {HOSTS[name]}, expected {expected}: " in result.stderr
    operations = json.loads(result.stdout[result.stdout.index("{"):])["results"]["operations"]
    [federation] = [op for op in operations if op["names"] == ["Federation check | from the controller"]]
    assert sorted(federation["no_change"]) == ["hs1", "hs2"]
