"""Issue (reliability): one re-run repairs exactly what drifted, the next reports 0 changes,
and rooms, messages, media and signing keys survive it all. Checked from outside and by hash."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from federate.lab import prove
from federate.lab.clients import find_traces, leave_traces
from federate.lab.runner import REPO_ROOT, assert_converged, changed_operations, run_deploy
from federate.checker.http import https_get

pytestmark = pytest.mark.lab

BETA = "/etc/matrix-synapse/beta.test"
KEPT_FILES = f"{BETA}/signing.key {BETA}/secrets.yaml"  # the database is PostgreSQL: its data is checked via the API

# name: (tamper command on hs2, substrings of the operations that must change, and nothing else).
# A restart or reload is owed before the change goes live and cleared after it ran ("... done").
TAMPERS = {
    "homeserver.yaml edited": (f"echo 'enable_registration: true' >> {BETA}/homeserver.yaml",
                               {"beta.test: homeserver.yaml", "beta.test: restart on change",
                                "beta.test: restart done"}),
    "unit stopped": ("systemctl stop matrix-synapse@beta.test", {"beta.test: running and enabled"}),
    "unit disabled": ("systemctl disable -q matrix-synapse@beta.test", {"beta.test: running and enabled"}),
    "firewall rule deleted": ("ufw delete allow 8448/tcp", {"ufw: allow only"}),
    "proxy config edited": ("sed -i 's/return 404;/return 418;/' /etc/nginx/conf.d/federate-beta.test.conf"
                            " && systemctl reload nginx",
                            {"beta.test: site", "nginx: reload on change", "nginx: reload done"}),
    "proxy config removed": ("rm /etc/nginx/conf.d/federate-beta.test.conf && systemctl reload nginx",
                             {"beta.test: site", "nginx: reload on change", "nginx: reload done"}),
    "well-known removed": ("sed -i '/location = \\/.well-known\\/matrix\\/server/,/^    }$/d' "
                           "/etc/nginx/conf.d/federate-beta.test.conf && systemctl reload nginx",
                           {"beta.test: site", "nginx: reload on change", "nginx: reload done"}),
    "file modes and owners changed": (f"chmod 644 {BETA}/secrets.yaml {BETA}/homeserver.yaml && "
                                      "chown root /var/lib/matrix-synapse/beta.test",
                                      {"beta.test: owner and mode of secrets.yaml",
                                       "beta.test: homeserver.yaml owner and mode",
                                       "beta.test: data dir"}),
    "PostgreSQL auth files' modes and owners changed": (
        "chmod 644 /etc/postgresql/*/main/pg_hba.conf && chown root:root /etc/postgresql/*/main/pg_ident.conf",
        {"pg_hba.conf owner and mode", "pg_ident.conf owner and mode"}),
    "package missing from the venv": ("/opt/matrix-synapse/venv/bin/python -m pip uninstall -q -y attrs",
                                      {"Reinstall packages missing", "beta.test: restart on change",
                                       "beta.test: restart done"}),
}


@pytest.fixture(scope="module")
def before(deployed):
    users = prove.accounts(prove.load_settings(deployed.inventory))
    traces = asyncio.run(leave_traces(users["beta.test"], deployed.info["dns"], deployed.info["ca_file"]))
    hashes = deployed.ssh("hs2", f"sha256sum {KEPT_FILES}").stdout
    return users, traces, hashes


def _status_settles(name: str, path: str, info: dict, status: int, seconds: float = 10.0) -> bool:
    """nginx's reload returns before its new workers answer: poll for the new answer."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if https_get(name, 443, path, ca_file=info["ca_file"], dns_server=info["dns"]).status == status:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("case", list(TAMPERS))
def test_one_run_repairs_exactly_the_drift(deployed, before, case):
    tamper, expected = TAMPERS[case]
    deployed.ssh("hs2", tamper)
    info = deployed.info
    if case == "well-known removed":  # the tamper is real: seen from outside first
        assert _status_settles("beta.test", "/.well-known/matrix/server", info, 404)
    repair = run_deploy(deployed.inventory, "--json")
    assert repair.returncode == 0, repair.stderr[-3000:]
    changed = changed_operations(repair, "hs2")
    unexpected = [names for names in changed if not any(e in n for e in expected for n in names)]
    missing = [e for e in expected if not any(e in n for names in changed for n in names)]
    assert not unexpected and not missing, f"changed: {changed}"
    assert changed_operations(repair, "hs1") == []  # the other host did not drift
    assert_converged(deployed.inventory)
    # Seen from outside: beta.test serves its well-known and federation API again.
    reply = https_get("beta.test", 8448, "/_matrix/key/v2/server", ca_file=info["ca_file"], dns_server=info["dns"])
    assert reply.status == 200 and reply.json()["server_name"] == "beta.test"
    assert https_get("beta.test", 443, "/.well-known/matrix/server", ca_file=info["ca_file"],
                     dns_server=info["dns"]).json() == {"m.server": "beta.test:443"}


def test_rooms_messages_media_and_keys_survived(deployed, before):
    users, traces, hashes = before
    bodies, media_sha256 = asyncio.run(find_traces(users["beta.test"], deployed.info["dns"],
                                                   deployed.info["ca_file"], traces))
    assert "still here" in bodies
    assert media_sha256 == traces["sha256"]
    assert deployed.ssh("hs2", f"sha256sum {KEPT_FILES}").stdout == hashes


def test_federate_drift_names_what_drifted_and_changes_nothing(deployed):
    """The monitoring check: read-only, exit 1 naming the drift, then 0 once a deploy repaired it."""
    federate = [str(Path(sys.executable).parent / "federate"), "drift", deployed.inventory]

    def drift(*extra):
        return subprocess.run(federate + list(extra), cwd=REPO_ROOT, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=600)
    clean = drift()
    assert clean.returncode == 0, clean.stdout + clean.stderr
    deployed.ssh("hs2", f"systemctl stop matrix-synapse@beta.test && chmod 644 {BETA}/homeserver.yaml")
    try:
        found = drift("--json")
        assert found.returncode == 1, found.stdout + found.stderr
        report = json.loads(found.stdout)
        assert set(report["changes"]) == {"hs2"}
        names = " / ".join(report["changes"]["hs2"])
        assert "beta.test: running and enabled" in names and "beta.test: homeserver.yaml owner and mode" in names
        text = drift()
        assert text.returncode == 1 and "  hs2: Synapse | beta.test: running and enabled" in text.stdout
        assert "alpha.test" not in text.stdout  # hs2's own operation names
        # read-only: the unit is still stopped
        assert deployed.ssh("hs2", "systemctl is-active matrix-synapse@beta.test", check=False).stdout.strip() != "active"
        secrets = deployed.ssh("hs2", f"cat {BETA}/secrets.yaml").stdout
        assert not [v for v in secrets.split() if len(v) > 20 and v in found.stdout + text.stdout]
    finally:
        assert run_deploy(deployed.inventory).returncode == 0
    assert drift().returncode == 0
