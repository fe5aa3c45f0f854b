"""Issue 11: the hosts hardened to Mozilla's and Synapse's guidance, observed from outside on the
shared lab (nginx and ufw; hs1 on Debian 12, hs2 on Debian 13). The caddy and nftables variant is
checked the same way in test_variants.py.

- TLS: Mozilla "intermediate" (an nmap ssl-enum-ciphers scan grades A, no CBC), no session tickets,
  no handshake for names the host does not serve;
- HTTP: HSTS for two years on 443, no server version in headers or error pages, port 8448 serves
  only the federation and key APIs;
- the internal homeserver's federation API answers only its partners' hosts: 403 from anywhere else.
"""

from __future__ import annotations

import subprocess

import pytest

from conftest import (assert_hsts_and_no_version, assert_no_handshake_for_unknown_names, assert_tls_grade_a,
                      remote_status, tls_scan)
from federate.checker.http import https_get

pytestmark = pytest.mark.lab

PUBLIC = {"hs1": "matrix.alpha.test", "hs2": "beta.test"}
# the keys' raw path, which a proxy that decodes and cleans it would take for the client API
SMUGGLED_KEYS = "/_matrix/key/v2/server/x%2F..%2F..%2F..%2F..%2Fclient%2Fversions"


@pytest.mark.parametrize("host", ["hs1", "hs2"])
def test_tls_is_mozilla_intermediate_grade_a(deployed, host):
    assert_tls_grade_a(tls_scan(deployed.address(host), PUBLIC[host]))


@pytest.mark.parametrize("host", ["hs1", "hs2"])
def test_no_tls_session_tickets(deployed, host):
    """nginx never rotates its ticket key, so tickets would undo forward secrecy: it issues none."""
    result = subprocess.run(["openssl", "s_client", "-tls1_2", "-connect", f"{deployed.address(host)}:443",
                             "-servername", PUBLIC[host], "-CAfile", deployed.info["ca_file"]],
                            input="", text=True, capture_output=True, timeout=30)
    assert "Verify return code: 0 (ok)" in result.stdout, result.stdout[-2000:]
    assert "TLS session ticket lifetime hint" not in result.stdout


@pytest.mark.parametrize("host", ["hs1", "hs2"])
def test_unknown_names_get_no_handshake(deployed, host):
    assert_no_handshake_for_unknown_names(deployed.address(host))


@pytest.mark.parametrize("host", ["hs1", "hs2"])
def test_hsts_on_443_and_no_server_version(deployed, host):
    info = deployed.info
    name = PUBLIC[host]
    client = https_get(name, 443, "/_matrix/client/versions", ca_file=info["ca_file"], dns_server=info["dns"])
    missing = https_get(name, 8448, "/nothing-here", ca_file=info["ca_file"], dns_server=info["dns"])
    assert (client.status, missing.status) == (200, 404)
    assert_hsts_and_no_version(client, missing)
    well_known = https_get(name.removeprefix("matrix."), 443, "/.well-known/matrix/client", ca_file=info["ca_file"],
                           dns_server=info["dns"])
    assert "strict-transport-security" in well_known.headers  # also where the site adds headers of its own


@pytest.mark.parametrize("path,status", [
    ("/_matrix/key/v2/server", 200), ("/_matrix/federation/v1/version", 200),
    ("/_matrix/client/versions", 404), ("/_synapse/client/oidc/callback", 404),
    ("/.well-known/matrix/server", 404), ("/_synapse/admin/v1/server_version", 404),
])
def test_port_8448_serves_only_federation(deployed, path, status):
    info = deployed.info
    assert https_get("alpha.test", 8448, path, ca_file=info["ca_file"], dns_server=info["dns"]).status == status


def test_internal_federation_answers_only_its_partners_host(deployed):
    """internal.alpha.test whitelists alpha.test (on hs1): hs1's address gets in; beta.test's host
    (hs2) and the controller get 403 from the proxy, on 443 and 8448 alike."""
    for port in (443, 8448):
        for path in ("/_matrix/key/v2/server", "/_matrix/federation/v1/version"):
            url = f"https://internal.alpha.test:{port}{path}"
            assert remote_status(deployed, "hs1", url)[0] == 200, url
            status, body = remote_status(deployed, "hs2", url)
            assert status == 403 and '"errcode":"M_FORBIDDEN"' in body, (url, status, body)
            reply = https_get("internal.alpha.test", port, path, ca_file=deployed.info["ca_file"],
                              dns_server=deployed.info["dns"])
            assert reply.status == 403, url
    # the client API stays open (no client_allow_ranges here)
    assert remote_status(deployed, "hs2", "https://internal.alpha.test/_matrix/client/versions")[0] == 200


@pytest.mark.parametrize("path", [SMUGGLED_KEYS, "/_matrix/client/../federation/v1/version",
                                  "/_matrix/client/versions/..%2F..%2Ffederation%2Fv1%2Fversion"])
def test_no_path_trick_gets_past_the_partner_lock(deployed, path):
    """nginx routes by the cleaned path, Synapse by the raw one: no raw path reaches the other API."""
    status, body = remote_status(deployed, "hs2", f"https://internal.alpha.test{path}")
    assert status in (400, 403, 404) and "verify_keys" not in body and '"server":' not in body, (status, body)
