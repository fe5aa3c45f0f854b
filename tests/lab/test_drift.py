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


# Each drift case runs on both hosts of the mixed lab: hs2 (beta.test) runs Debian 13, hs1
# (alpha.test, beside internal.alpha.test) Debian 12. (host, server name, the m.server it publishes)
TARGETS = {"debian13": ("hs2", "beta.test", "beta.test:443"),
           "debian12": ("hs1", "alpha.test", "matrix.alpha.test:443")}
OTHER_HOST = {"hs1": "hs2", "hs2": "hs1"}


def kept_files(name: str) -> str:
    """The files that must survive byte for byte (the database is PostgreSQL: checked via the API)."""
    return f"/etc/matrix-synapse/{name}/signing.key /etc/matrix-synapse/{name}/secrets.yaml"


# name: (tamper command for server NAME on its host, substrings of the operations that must change,
# and nothing else). A restart or reload is owed before the change goes live and cleared after it
# ran ("... done"). On hs1 a restart of alpha.test's code also restarts internal.alpha.test, whose
# operation names contain "alpha.test: ...".
TAMPERS = {
    "homeserver.yaml edited": ("echo 'enable_registration: true' >> /etc/matrix-synapse/{name}/homeserver.yaml",
                               {"{name}: homeserver.yaml", "{name}: restart on change", "{name}: restart done"}),
    "unit stopped": ("systemctl stop matrix-synapse@{name}", {"{name}: running and enabled"}),
    "unit disabled": ("systemctl disable -q matrix-synapse@{name}", {"{name}: running and enabled"}),
    "firewall rule deleted": ("ufw delete allow 8448/tcp", {"ufw: allow only"}),
    "proxy config edited": ("sed -i 's/return 404;/return 418;/' /etc/nginx/conf.d/federate-{name}.conf"
                            " && systemctl reload nginx",
                            {"{name}: site", "nginx: reload on change", "nginx: reload done"}),
    "proxy config removed": ("rm /etc/nginx/conf.d/federate-{name}.conf && systemctl reload nginx",
                             {"{name}: site", "nginx: reload on change", "nginx: reload done"}),
    "well-known removed": ("sed -i '/location = \\/.well-known\\/matrix\\/server/,/^    }}$/d' "
                           "/etc/nginx/conf.d/federate-{name}.conf && systemctl reload nginx",
                           {"{name}: site", "nginx: reload on change", "nginx: reload done"}),
    "file modes and owners changed": ("chmod 644 /etc/matrix-synapse/{name}/secrets.yaml "
                                      "/etc/matrix-synapse/{name}/homeserver.yaml && "
                                      "chown root /var/lib/matrix-synapse/{name}",
                                      {"{name}: owner and mode of secrets.yaml",
                                       "{name}: homeserver.yaml owner and mode", "{name}: data dir"}),
    "a file deep in the data dir owned by root": (
        "install -o root -g root -m 600 /dev/null /var/lib/matrix-synapse/{name}/media_store/federate-stray",
        {"{name}: everything in /var/lib/matrix-synapse/{name} owned by"}),
    "PostgreSQL auth files' modes and owners changed": (
        "chmod 644 /etc/postgresql/*/main/pg_hba.conf && chown root:root /etc/postgresql/*/main/pg_ident.conf",
        {"pg_hba.conf owner and mode", "pg_ident.conf owner and mode"}),
    "sandbox drop-in loosened": ("sed -i 's/^ProtectSystem=strict/ProtectSystem=no/' "
                                 "/etc/systemd/system/matrix-synapse@.service.d/federate-sandbox.conf && "
                                 "systemctl daemon-reload && systemctl restart matrix-synapse@{name}",
                                 {"Sandbox of every homeserver", "Reload systemd units", "Unit reload done",
                                  "{name}: restart on change", "{name}: restart done"}),
    "package missing from the venv": ("/opt/matrix-synapse/venv/bin/python -m pip uninstall -q -y attrs",
                                      {" in /opt/matrix-synapse/venv", "{name}: restart on change",
                                       "{name}: restart done"}),
    # back to the lock's version, and the package installed by hand removed
    "package downgraded and one added in the venv": (
        "/opt/matrix-synapse/venv/bin/python -m pip install -q --no-deps attrs==25.4.0 tomli==2.0.1",
        {" in /opt/matrix-synapse/venv", "{name}: restart on change", "{name}: restart done"}),
}

# What the workers read too (homeserver.yaml, the venv); the main process's unit files are not theirs.
RESTARTS_WORKERS = {"homeserver.yaml edited", "package missing from the venv",
                    "package downgraded and one added in the venv"}


@pytest.fixture(scope="module")
def before(deployed):
    """Per target: a room with a message and a file, and the hashes of the files that must stay."""
    users = prove.accounts(prove.load_settings(deployed.inventory))
    found = {}
    for target, (host, name, _) in TARGETS.items():
        traces = asyncio.run(leave_traces(users[name], deployed.info["dns"], deployed.info["ca_file"]))
        found[target] = users[name], traces, deployed.ssh(host, f"sha256sum {kept_files(name)}").stdout
    return found


def _status_settles(name: str, path: str, info: dict, status: int, seconds: float = 10.0) -> bool:
    """nginx's reload returns before its new workers answer: poll for the new answer."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if https_get(name, 443, path, ca_file=info["ca_file"], dns_server=info["dns"]).status == status:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("case", list(TAMPERS))
def test_one_run_repairs_exactly_the_drift(deployed, before, case, target):
    host, name, m_server = TARGETS[target]
    tamper, expected = TAMPERS[case]
    expected = {e.format(name=name) for e in expected}
    if case in RESTARTS_WORKERS and deployed.runs_workers(host):  # all together, after the main process
        expected |= {f"{name}: all workers stopped, then started together", f"{name}: workers restart done"}
    deployed.ssh(host, tamper.format(name=name))
    info = deployed.info
    if case == "well-known removed":  # the tamper is real: seen from outside first
        assert _status_settles(name, "/.well-known/matrix/server", info, 404)
    repair = run_deploy(deployed.inventory, "--json")
    assert repair.returncode == 0, repair.stderr[-3000:]
    changed = changed_operations(repair, host)
    unexpected = [names for names in changed if not any(e in n for e in expected for n in names)]
    missing = [e for e in expected if not any(e in n for names in changed for n in names)]
    assert not unexpected and not missing, f"changed: {changed}"
    assert changed_operations(repair, OTHER_HOST[host]) == []  # the other host did not drift
    assert_converged(deployed.inventory)
    # Seen from outside: the server serves its well-known and federation API again.
    reply = https_get(name, 8448, "/_matrix/key/v2/server", ca_file=info["ca_file"], dns_server=info["dns"])
    assert reply.status == 200 and reply.json()["server_name"] == name
    assert https_get(name, 443, "/.well-known/matrix/server", ca_file=info["ca_file"],
                     dns_server=info["dns"]).json() == {"m.server": m_server}


@pytest.mark.parametrize("target", list(TARGETS))
def test_rooms_messages_media_and_keys_survived(deployed, before, target):
    host, name, _ = TARGETS[target]
    account, traces, hashes = before[target]
    bodies, media_sha256 = asyncio.run(find_traces(account, deployed.info["dns"], deployed.info["ca_file"], traces))
    assert "still here" in bodies
    assert media_sha256 == traces["sha256"]
    assert deployed.ssh(host, f"sha256sum {kept_files(name)}").stdout == hashes


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
