"""Issue 13 (item 4) with nftables and caddy: metrics on the variant lab (after test_variants, before
test_variants_restore, which finds the lab as it was: the lab inventory is deployed again at the end).

beta.test's metrics on hs2's lab address for the controller only, internal.beta.test's on loopback.
The controller scrapes beta.test's, hs1 cannot connect, nothing else new answers on hs2; the nftables
table holds the one rule; a re-run changes nothing (its time printed beside a no-op run without
metrics on the same lab); `federate destinations` reads the queue on the host.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from conftest import SCANNED_PORTS, federate, inventory_deployed, open_ports, reachable_from
from federate.lab.runner import assert_converged

pytestmark = pytest.mark.lab

BETA_PORT, INTERNAL_PORT = 9000, 9001  # the default metrics ports, in the order of hs2's homeservers


@pytest.fixture(scope="module")
def nft_metrics(variant_lab, tmp_path_factory):
    start = time.monotonic()
    assert_converged(variant_lab.inventory)
    print(f"no-op re-run without metrics: {time.monotonic() - start:.1f}s")

    def metrics_on(hosts):
        beta, internal = dict(hosts)["hs2"]["homeservers"]
        beta["metrics"] = {"bind": variant_lab.address("hs2"), "scrapers": [variant_lab.info["dns"]]}
        internal["metrics"] = {}
    path = tmp_path_factory.mktemp("nft-metrics") / "metrics.py"
    with inventory_deployed(variant_lab, path, metrics_on) as inventory:
        yield inventory


def test_nftables_lets_only_the_scraper_in_and_a_rerun_changes_nothing(variant_lab, nft_metrics):
    start = time.monotonic()
    assert_converged(nft_metrics)
    print(f"no-op re-run with metrics on: {time.monotonic() - start:.1f}s")
    hs2 = variant_lab.address("hs2")
    with urllib.request.urlopen(f"http://{hs2}:{BETA_PORT}/_synapse/metrics", timeout=10) as reply:
        assert "synapse_federation_transaction_queue_pending_pdus" in reply.read().decode()
    assert not reachable_from(variant_lab, "hs1", hs2, BETA_PORT)
    assert open_ports(hs2, SCANNED_PORTS) == {22, 80, 443, 8448, BETA_PORT}
    assert not reachable_from(variant_lab, "hs1", hs2, INTERNAL_PORT)
    table = variant_lab.ssh("hs2", "nft list table inet federate").stdout
    assert f"ip saddr {variant_lab.info['dns']} ip daddr {hs2} tcp dport {BETA_PORT} accept" in table, table
    local = variant_lab.ssh("hs2", f"curl -sf http://127.0.0.1:{INTERNAL_PORT}/_synapse/metrics | grep -c '^synapse_'")
    assert int(local.stdout) > 0
    result = federate("destinations", nft_metrics, "--json")
    assert "Traceback" not in result.stderr, result.stderr
    by_name = {r["server_name"]: r for r in json.loads(result.stdout)}
    for name in ("beta.test", "internal.beta.test"):
        assert (by_name[name]["pending_pdus"], by_name[name]["pending_edus"]) == (0, 0), by_name[name]
    assert "pending_pdus" not in by_name["alpha.test"]  # metrics off there
