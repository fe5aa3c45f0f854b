"""Issue: internal + external homeservers on one host; the federation policy proven with real clients."""

from __future__ import annotations

import logging

import pytest

from federate.lab import prove
from federate.checker.http import https_get

pytestmark = pytest.mark.lab


def test_internal_server_talks_to_its_partner_and_refuses_the_other_host(deployed, caplog):
    info = deployed.info
    with caplog.at_level(logging.DEBUG):
        checks = prove.internal_policy_checks(prove.load_settings(deployed.inventory), info["dns"], info["ca_file"])
    # an expected refusal is no malformed answer: matrix-nio's schema complaint stays out of the output
    assert "Error validating response" not in caplog.text
    by_name = {check.name: check for check in checks}
    assert [c.line() for c in checks if not c.ok] == []
    assert set(by_name) == {
        "internal.alpha.test: room with whitelisted alpha.test",
        "internal.alpha.test: invite from beta.test refused",
        "internal.alpha.test: profile lookup from beta.test refused",
        "internal.alpha.test: join from beta.test refused",
    }
    # Refused by policy, not by breakage: the internal server's proxy says why (beta.test's host is no partner's).
    for what in ("invite", "profile lookup", "join"):
        detail = by_name[f"internal.alpha.test: {what} from beta.test refused"].detail
        assert "admits federation only from its partners" in detail and "M_FORBIDDEN" in detail


def test_each_server_name_has_its_own_well_known_and_certificate(deployed):
    info = deployed.info
    for name, expected in (("alpha.test", "matrix.alpha.test:443"),
                           ("internal.alpha.test", "internal.alpha.test:443"),
                           ("beta.test", "beta.test:443")):
        reply = https_get(name, 443, "/.well-known/matrix/server", ca_file=info["ca_file"], dns_server=info["dns"])
        assert reply.json() == {"m.server": expected}
        names = [value for kind, value in reply.peer_certificate.get("subjectAltName", ()) if kind == "DNS"]
        assert name in names
