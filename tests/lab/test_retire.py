"""Issue 14 (item 5): a homeserver taken out of the inventory is retired and comes back as it was.

On the shared lab: internal.alpha.test leaves hs1's inventory. One run stops and disables it,
drops its site and its certificate's renewal, keeps its config, signing key, secrets, data,
database and OS user, and says where they are; the next run changes nothing. Put back, one run
brings it back: same signing key, carol's room, messages and media, federation with alpha.test.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from federate.checker.http import https_get
from federate.lab import prove
from federate.lab.clients import find_traces, leave_traces
from conftest import federate
from federate.lab.runner import assert_converged, run_deploy, write_inventory

pytestmark = pytest.mark.lab

NAME = "internal.alpha.test"
KEPT = f"/etc/matrix-synapse/{NAME}/signing.key /etc/matrix-synapse/{NAME}/secrets.yaml"


def destinations(deployed, *args: str):
    return federate("destinations", deployed.inventory, *args)


def test_retired_homeserver_keeps_everything_and_comes_back(deployed, tmp_path):
    info = deployed.info
    carol = prove.accounts(prove.load_settings(deployed.inventory))[NAME]
    traces = asyncio.run(leave_traces(carol, info["dns"], info["ca_file"]))
    hashes = deployed.ssh("hs1", f"sha256sum {KEPT}").stdout

    def without_it(hosts):
        data = dict(hosts)["hs1"]
        data["homeservers"] = [hs for hs in data["homeservers"] if hs["server_name"] != NAME]
    retired = write_inventory(tmp_path / "retired.py", deployed.inventory, without_it)
    try:
        run = run_deploy(retired)
        assert run.returncode == 0, run.stderr[-4000:]
        assert f"{NAME} is not in the inventory any more: stopped and disabled, no data deleted." in run.stderr
        assert f"rm -r /etc/matrix-synapse/{NAME} /var/lib/matrix-synapse/{NAME}" in run.stderr
        state = deployed.ssh("hs1", f"systemctl is-active matrix-synapse@{NAME}; systemctl is-enabled "
                                    f"matrix-synapse@{NAME}; ls /etc/letsencrypt/renewal-parked; "
                                    f"ls /etc/nginx/conf.d; id -u synapse_internal_alpha_test >/dev/null && echo user; "
                                    "runuser -u postgres -- psql -Atc \"SELECT count(*) FROM pg_database WHERE "
                                    "datname = 'synapse_internal_alpha_test'\"", check=False).stdout.split()
        assert state[:3] == ["inactive", "disabled", f"{NAME}.conf"], state
        assert f"federate-{NAME}.conf" not in state and state[-2:] == ["user", "1"], state
        assert deployed.ssh("hs1", f"sha256sum {KEPT}").stdout == hashes
        # its admin token is the one thing removed: a credential of a server that does not run
        assert deployed.ssh("hs1", "ls /etc/federate/admin").stdout.split() == ["alpha.test.token"]
        with pytest.raises(OSError):  # its name gets no TLS handshake any more (ssl.SSLError)
            https_get(NAME, 443, "/_matrix/client/versions", ca_file=info["ca_file"], dns_server=info["dns"])
        assert_converged(retired)  # retired stays retired: no change, no failure
    finally:
        back = run_deploy(deployed.inventory)
        assert back.returncode == 0, back.stderr[-4000:]
    assert deployed.ssh("hs1", f"sha256sum {KEPT}").stdout == hashes
    assert deployed.ssh("hs1", "ls /etc/federate/admin").stdout.split() == ["alpha.test.token", f"{NAME}.token"]
    assert deployed.ssh("hs1", f"systemctl is-active matrix-synapse@{NAME}; ls /etc/letsencrypt/renewal").stdout.split() \
        == ["active", "alpha.test.conf", f"{NAME}.conf"]
    messages, media_sha256 = asyncio.run(find_traces(carol, info["dns"], info["ca_file"], traces))
    assert "still here" in messages and media_sha256 == traces["sha256"]
    # Its new admin token works; and alpha.test may have backed off from it while it was away (anything
    # alpha.test sent it then failed): the documented remedy, --reset, before a new room with it.
    own = destinations(deployed, "--server", NAME, "--json")
    assert own.returncode in (0, 1) and not json.loads(own.stdout)[0].get("error"), own.stdout + own.stderr
    partner = {d["destination"]: d for d in json.loads(destinations(deployed, "--server", "alpha.test",
                                                                    "--json").stdout)[0]["destinations"]}
    if partner[NAME]["status"] != "working":
        print(f"alpha.test backed off from {NAME} while it was retired: {partner[NAME]}")
        assert destinations(deployed, "--server", "alpha.test", "--reset", NAME).returncode == 0
    checks = prove.internal_policy_checks(prove.load_settings(deployed.inventory), info["dns"], info["ca_file"])
    assert [c.line() for c in checks if not c.ok] == []  # a room with its partner again, outsiders refused
    assert_converged(deployed.inventory)
