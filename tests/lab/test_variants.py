"""Issue 6: the caddy proxy and the nftables firewall on their own lab, observed from outside
(hs1 on Debian 12 with provided certificates, hs2 on Debian 13 with caddy's own ACME client, where
the firewall and proxy switches run): federation works, only SSH
and the web ports answer, re-runs change nothing, a deleted nftables rule is repaired, a firewall
switch (nftables -> ufw -> nftables) keeps SSH and leaves no stale rules, and a proxy switch
(caddy -> nginx -> caddy) hands the ports over. Cold and no-op deploy times are printed at the end."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest

from conftest import (LabSession, assert_hsts_and_no_version, assert_no_handshake_for_unknown_names,
                      assert_tls_grade_a, open_ports, remote_status, served_serial, tls_scan)
from federate.lab import prove
from federate.checker.report import check_server
from federate.lab.runner import assert_converged, changed_names, changed_operations, run_deploy, write_inventory
from federate.checker.http import https_get

pytestmark = pytest.mark.lab

WEB_RULE = "tcp dport { 80, 443, 8448 } accept"


def test_remote_checks_pass(variant_lab):
    checks = prove.prove(variant_lab.info)
    failed = [c.line() for c in checks if not c.ok]
    assert not failed, "\n".join(failed)
    # well-known x2, version, keys per open server; the room across hosts; internal.beta.test: a room
    # with beta.test, and alpha.test's invite, profile lookup and join refused
    assert len(checks) == 4 * 2 + 1 + 4
    refusals = [c for c in checks if c.name.startswith("internal.beta.test: ") and "refused" in c.name]
    assert len(refusals) == 3 and all("admits federation only from its partners" in c.detail for c in refusals)


@pytest.mark.parametrize("host,name", [("hs1", "matrix.alpha.test"), ("hs2", "beta.test")])
def test_caddy_tls_grade_a_hsts_and_no_server_header(variant_lab, host, name):
    """Mozilla "intermediate" on caddy too (caddy keeps session tickets: it rotates their keys itself)."""
    info = variant_lab.info
    assert_tls_grade_a(tls_scan(variant_lab.address(host), name))
    assert_no_handshake_for_unknown_names(variant_lab.address(host))
    client = https_get(name, 443, "/_matrix/client/versions", ca_file=info["ca_file"], dns_server=info["dns"])
    missing = https_get(name, 8448, "/_matrix/client/versions", ca_file=info["ca_file"], dns_server=info["dns"])
    assert (client.status, missing.status) == (200, 404)  # 8448: federation only
    assert_hsts_and_no_version(client, missing)


def test_caddy_internal_homeserver_answers_only_its_partners_and_its_clients(variant_lab):
    for port in (443, 8448):
        url = f"https://internal.beta.test:{port}/_matrix/key/v2/server"
        assert remote_status(variant_lab, "hs2", url)[0] == 200, url
        status, body = remote_status(variant_lab, "hs1", url)
        assert status == 403 and '"errcode":"M_FORBIDDEN"' in body, (url, status, body)
    # the keys' raw path that a decoding, cleaning path matcher would take for the client API
    status, body = remote_status(variant_lab, "hs1", "https://internal.beta.test/_matrix/key/v2/server/"
                                                     "x%2F..%2F..%2F..%2F..%2Fclient%2Fversions")
    assert status == 403 and "verify_keys" not in body, (status, body)
    client_api = "https://internal.beta.test/_matrix/client/versions"
    assert remote_status(variant_lab, "hs2", client_api)[0] == 200
    assert remote_status(variant_lab, "hs1", client_api)[0] == 403  # not in client_allow_ranges
    assert https_get("internal.beta.test", 443, "/_matrix/client/versions", ca_file=variant_lab.info["ca_file"],
                     dns_server=variant_lab.info["dns"]).status == 200  # the controller is


def test_caddy_admin_api_is_a_socket_only_root_and_caddy_reach(variant_lab):
    out = variant_lab.ssh("hs2", "stat -c '%U %a' /run/caddy; ss -Hlnt | awk '{print $4}' | grep -c ':2019$'; "
                                 "systemctl reload caddy && echo reloaded; "
                                 "runuser -u nobody -- curl -s --unix-socket /run/caddy/admin.sock http://localhost/config/"
                                 " >/dev/null 2>&1 || echo refused", check=False).stdout.split("\n")
    assert out[:4] == ["caddy 700", "0", "reloaded", "refused"], out


@pytest.mark.parametrize("name,port,path", [
    ("matrix.alpha.test", 443, "/nothing-here"), ("beta.test", 8448, "/"),
    ("matrix.alpha.test", 443, "/_synapse/admin"), ("beta.test", 443, "/_synapse/admin/v1/server_version"),
])
def test_unmatched_paths_and_admin_api_are_404(variant_lab, name, port, path):
    info = variant_lab.info
    assert https_get(name, port, path, ca_file=info["ca_file"], dns_server=info["dns"]).status == 404


@pytest.mark.parametrize("host", ["hs1", "hs2"])
def test_only_ssh_and_web_ports_are_open(variant_lab, host):
    assert open_ports(variant_lab.address(host)) == {22, 80, 443, 8448}


def test_caddy_serves_the_provided_certificate_it_may_read(variant_lab):
    for name, port in [("alpha.test", 443), ("matrix.alpha.test", 8448)]:
        assert served_serial(variant_lab.info, name, port) == variant_lab.info["provided_serial"], (name, port)
    modes = variant_lab.ssh("hs1", "stat -c '%n %U:%G %a' /etc/federate/tls/alpha.test/*").stdout.splitlines()
    assert modes == ["/etc/federate/tls/alpha.test/fullchain.pem root:root 644",
                     "/etc/federate/tls/alpha.test/privkey.pem root:caddy 640"]
    assert not variant_lab.ssh("hs1", "find /var/lib/caddy -name '*.crt' 2>/dev/null",
                               check=False).stdout.strip()  # no ACME certificate was asked for


def test_caddy_without_certbot_and_nftables_without_ufw(variant_lab):
    for host in ("hs1", "hs2"):
        state = variant_lab.ssh(host, "systemctl is-active caddy; systemctl is-enabled caddy nftables; "
                                      "for p in nginx certbot ufw; do dpkg -s $p >/dev/null 2>&1 && echo $p; done",
                                check=False).stdout.split()
        assert state == ["active", "enabled", "enabled"], state
        assert "table inet federate" in variant_lab.ssh(host, "nft list ruleset").stdout


def test_second_run_changes_nothing(variant_lab):
    variant_lab.noop_rerun()


def test_deleted_nftables_rule_is_repaired_by_one_run(variant_lab):
    variant_lab.ssh("hs2", f"nft delete rule inet federate input handle $(nft -a list chain inet federate input"
                           f" | grep -F '{WEB_RULE}' | sed 's/.*handle //')")
    assert open_ports(variant_lab.address("hs2"), [22, 80, 443, 8448]) == {22}
    repair = run_deploy(variant_lab.inventory, "--json")
    assert repair.returncode == 0, repair.stderr[-3000:]
    assert changed_operations(repair, "hs2") == [["Firewall | nftables: allow only SSH (22), 80, 443, 8448"]]
    assert WEB_RULE in variant_lab.ssh("hs2", "nft list table inet federate").stdout
    assert open_ports(variant_lab.address("hs2")) == {22, 80, 443, 8448}
    assert_converged(variant_lab.inventory)


def test_edited_caddyfile_is_repaired_by_one_run(variant_lab):
    def status():
        return https_get("beta.test", 443, "/nothing-here", ca_file=variant_lab.info["ca_file"],
                         dns_server=variant_lab.info["dns"]).status
    variant_lab.ssh("hs2", "sed -i 's/respond 404/respond 418/' /etc/caddy/Caddyfile && systemctl reload caddy")
    assert status() == 418  # the tamper is live
    repair = run_deploy(variant_lab.inventory, "--json")
    assert repair.returncode == 0, repair.stderr[-3000:]
    changed = changed_names(repair, "hs2")
    assert changed == {"Caddyfile", "caddy: reload on change", "caddy: reload done"}, changed
    assert status() == 404
    assert_converged(variant_lab.inventory)


@contextmanager
def ssh_watched(lab: LabSession, host: str):
    """While the block runs: a new TCP connection to SSH every 0.2 s, and one open SSH session.
    Yields the list of refused connections; the session must still be alive at the end."""
    address, refused, stop = lab.address(host), [], threading.Event()

    def connect_often():
        while not stop.is_set():
            with socket.socket() as sock:
                sock.settimeout(2)
                if sock.connect_ex((address, 22)) != 0:
                    refused.append(time.monotonic())
            stop.wait(0.2)

    session = subprocess.Popen(
        ["ssh", "-i", lab.info["ssh_key"], "-o", f"UserKnownHostsFile={lab.info['known_hosts']}",
         "-o", "BatchMode=yes", f"root@{address}", "while sleep 0.5; do echo tick; done"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    prober = threading.Thread(target=connect_often, daemon=True)
    prober.start()
    try:
        yield refused
        assert session.poll() is None, "the open SSH session was cut"
    finally:
        stop.set()
        prober.join()
        session.terminate()
        session.wait(timeout=10)


def _switch(lab: LabSession, tmp_path, firewall: str):
    def mutate(hosts):
        dict(hosts)["hs2"]["firewall"] = firewall
    inventory = write_inventory(tmp_path / f"inventory-{firewall}.py", lab.inventory, mutate)
    with ssh_watched(lab, "hs2") as refused:
        result = run_deploy(inventory)
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert not refused, f"SSH refused {len(refused)} times during the switch to {firewall}"
    assert open_ports(lab.address("hs2")) == {22, 80, 443, 8448}
    assert_converged(inventory)


def test_firewall_switch_keeps_ssh_and_leaves_no_stale_rules(variant_lab, tmp_path):
    _switch(variant_lab, tmp_path, "ufw")
    ufw = variant_lab.ssh("hs2", "ufw status; ufw show added").stdout
    assert "Status: active" in ufw and "ufw allow 8448/tcp" in ufw
    assert "inet federate" not in variant_lab.ssh("hs2", "nft list tables").stdout
    assert variant_lab.ssh("hs2", "systemctl is-enabled nftables", check=False).stdout.strip() == "disabled"

    _switch(variant_lab, tmp_path, "nftables")
    ufw = variant_lab.ssh("hs2", "ufw status; ufw show added").stdout
    assert "Status: inactive" in ufw and "ufw allow" not in ufw, ufw
    ruleset = variant_lab.ssh("hs2", "nft list ruleset").stdout
    assert "ufw" not in ruleset and "table inet federate" in ruleset, ruleset
    assert variant_lab.ssh("hs2", "systemctl is-enabled nftables").stdout.strip() == "enabled"


def _proxy_state(lab: LabSession, host: str) -> list[str]:
    return lab.ssh(host, "systemctl is-active caddy nginx; systemctl is-enabled caddy nginx certbot.timer",
                   check=False).stdout.split()


def _serving_443(lab: LabSession) -> str:
    """The program answering on port 443 of hs2 (neither proxy tells its name or version in answers)."""
    info = lab.info
    reply = https_get("beta.test", 443, "/nothing-here", ca_file=info["ca_file"], dns_server=info["dns"])
    assert reply.status == 404 and reply.headers.get("server", "nginx") == "nginx", reply.headers
    return lab.ssh("hs2", "ss -Hltnp 'sport = :443' | grep -o 'users:((\"[a-z]*' | sort -u | cut -d'\"' -f2").stdout.strip()


def test_proxy_switch_hands_the_ports_over(variant_lab, tmp_path):
    def to(proxy):
        def mutate(hosts):
            dict(hosts)["hs2"]["proxy"] = proxy
        inventory = write_inventory(tmp_path / f"inventory-{proxy}.py", variant_lab.inventory, mutate)
        result = run_deploy(inventory)  # ends with the federation check of beta.test
        assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
        assert_converged(inventory)
        report = check_server("beta.test", dns_server=variant_lab.info["dns"], ca_file=variant_lab.info["ca_file"])
        assert report["FederationOK"], report.get("Hints")

    to("nginx")  # certbot obtains the certificates; caddy stays installed, stopped and disabled
    assert _proxy_state(variant_lab, "hs2") == ["inactive", "active", "disabled", "enabled", "enabled"]
    assert _serving_443(variant_lab) == "nginx"
    to("caddy")  # back: caddy still holds its certificates; certbot's renewals off again
    assert _proxy_state(variant_lab, "hs2") == ["active", "inactive", "enabled", "disabled", "disabled"]
    assert _serving_443(variant_lab) == "caddy"


def test_loosened_caddy_admin_dropin_is_repaired(variant_lab):
    """An edited drop-in that would open caddy's admin socket directory to everyone is put back, and
    caddy restarted onto it once."""
    dropin = "/etc/systemd/system/caddy.service.d/federate-admin.conf"
    variant_lab.ssh("hs2", f"sed -i 's/RuntimeDirectoryMode=0700/RuntimeDirectoryMode=0755/' {dropin} && "
                           "chmod 666 " + dropin + " && systemctl daemon-reload && systemctl restart caddy")
    assert variant_lab.ssh("hs2", "stat -c %a /run/caddy").stdout.strip() == "755"
    repair = run_deploy(variant_lab.inventory, "--json")
    assert repair.returncode == 0, repair.stderr[-3000:]
    # the file is written whole with its owner and mode, so the separate mode repair finds nothing left
    assert {"caddy: admin socket directory (unit drop-in)", "caddy: restart onto the admin socket"} \
        <= changed_names(repair, "hs2")
    assert variant_lab.ssh("hs2", f"stat -c '%a %U' /run/caddy {dropin}").stdout.split("\n")[:2] == ["700 caddy", "644 root"]
    assert_converged(variant_lab.inventory)


def test_report_timings(variant_lab, capsys):
    with capsys.disabled():
        print("\n[caddy + nftables] " + ", ".join(f"{name} {seconds:.1f}s"
                                                 for name, seconds in variant_lab.timings.items()))
