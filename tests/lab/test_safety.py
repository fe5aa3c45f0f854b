"""Issue (reliability): bad input is refused before any host changes, naming host and field, never
with a traceback; secret values never appear in any kind of output."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from federate.lab.runner import assert_converged, run_deploy, write_inventory

pytestmark = pytest.mark.lab


def _hs(hosts, host):
    return dict(hosts)[host]


BAD_INPUTS = {
    "missing server name": (lambda h: _hs(h, "hs2")["homeservers"][0].pop("server_name"),
                            "host hs2: homeservers[0].server_name: is required"),
    "invalid server name": (lambda h: _hs(h, "hs2")["homeservers"][0].update(server_name="https://Beta.test"),
                            "host hs2: homeservers[0].server_name: must be a bare name"),
    "server name twice on a host": (lambda h: _hs(h, "hs2")["homeservers"].append({"server_name": "beta.test"}),
                                    "host hs2: homeservers[1].server_name: 'beta.test' is listed twice"),
    "server name on two hosts": (lambda h: _hs(h, "hs2")["homeservers"].append({"server_name": "alpha.test"}),
                                 "homeservers[1].server_name: 'alpha.test' is also deployed on host hs1"),
    "port collision": (lambda h: [hs.update(port=8100) for hs in _hs(h, "hs1")["homeservers"]],
                       "host hs1: homeservers[1].port: 8100 is already used by homeservers[0]"),
    "port out of range": (lambda h: _hs(h, "hs2")["homeservers"][0].update(port=70000),
                          "host hs2: homeservers[0].port: must be 1024-65535"),
    "unknown profile": (lambda h: _hs(h, "hs2")["homeservers"][0].update(profile="public"),
                        "host hs2: homeservers[0].profile: must be one of external, internal"),
    "unknown proxy": (lambda h: _hs(h, "hs2").update(proxy="apache"), "host hs2: proxy: must be one of"),
    "unknown firewall": (lambda h: _hs(h, "hs2").update(firewall="pf"), "host hs2: firewall: must be one of"),
    "unknown database": (lambda h: _hs(h, "hs2").update(database="mysql"), "host hs2: database: must be one of"),
    "whitelist not a list": (lambda h: _hs(h, "hs1")["homeservers"][1].update(federation_whitelist="alpha.test"),
                             "host hs1: homeservers[1].federation_whitelist: must be a list of server names"),
    "whitelist entry not a name": (lambda h: _hs(h, "hs1")["homeservers"][1].update(federation_whitelist=["a b"]),
                                   "host hs1: homeservers[1].federation_whitelist[0]: must be a lowercase DNS name"),
    "typo in a host key": (lambda h: _hs(h, "hs2").update(synapse_verison="1.0.0"),
                           "host hs2: synapse_verison: unknown key (did you mean 'synapse_version'?)"),
    "typo in a homeserver key": (lambda h: _hs(h, "hs2")["homeservers"][0].update(publichost="x.test"),
                                 "host hs2: homeservers[0].publichost: unknown key (did you mean 'public_host'?)"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_before_any_change(deployed, tmp_path, case):
    mutate, message = BAD_INPUTS[case]
    inventory = write_inventory(tmp_path / "inventory.py", deployed.inventory, mutate)
    result = run_deploy(inventory)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output, output[-2000:]
    assert "Traceback" not in output
    assert "Starting operation" not in output  # refused before anything ran on any host


OTHER_SYSTEMS = {
    "Debian 11": ('PRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\nNAME="Debian GNU/Linux"\nVERSION_ID="11"\n'
                  'VERSION_CODENAME=bullseye\nID=debian\n', "Debian GNU/Linux 11 (bullseye)"),
    "Ubuntu": ('PRETTY_NAME="Ubuntu 24.04.1 LTS"\nNAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\n'
               'ID_LIKE=debian\nVERSION_CODENAME=noble\n', "Ubuntu 24.04.1 LTS"),
}


@pytest.mark.parametrize("system", list(OTHER_SYSTEMS))
def test_an_unsupported_system_is_refused_before_any_change(deployed, system):
    """hs2 claims another system in /etc/os-release: the run stops while planning, naming the host
    and what the file says, and no operation starts (the deploy lock is never taken)."""
    text, pretty = OTHER_SYSTEMS[system]
    deployed.ssh("hs2", f"cp -P /etc/os-release /root/os-release.link && rm /etc/os-release && "
                        f"printf %s {shlex.quote(text)} > /etc/os-release")
    try:
        result = run_deploy(deployed.inventory, "--limit", "hs2")
    finally:
        deployed.ssh("hs2", "mv -f /root/os-release.link /etc/os-release")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (f"host hs2: /etc/os-release says {pretty}; federate deploys to Debian 12 (bookworm) and "
            "Debian 13 (trixie) only") in output, output[-2000:]
    assert "Traceback" not in output
    assert "Starting operation" not in output
    assert deployed.ssh("hs2", "test -L /etc/os-release && grep -c VERSION_ID=.13 /etc/os-release").stdout.strip() == "1"


def test_hosts_unchanged_after_refusals(deployed):
    assert_converged(deployed.inventory)


def _secret_values(deployed) -> set[str]:
    values = set()
    for host, names in (("hs1", ["alpha.test", "internal.alpha.test"]), ("hs2", ["beta.test"])):
        for name in names:
            secrets = yaml.safe_load(deployed.ssh(host, f"cat /etc/matrix-synapse/{name}/secrets.yaml").stdout)
            values.update(secrets.values())
            key = deployed.ssh(host, f"cat /etc/matrix-synapse/{name}/signing.key").stdout.split()
            values.add(key[-1])  # "ed25519 <id> <base64 seed>"
    return values


def test_secrets_never_appear_in_output(deployed, tmp_path):
    # A run that creates a user uploads a password: the most secret-heavy moment of a deploy.
    def add_user(hosts):
        _hs(hosts, "hs2")["homeservers"][0]["users"].append({"localpart": "dave"})
    with_user = write_inventory(tmp_path / "with_user.py", deployed.inventory, add_user)
    outputs = {"create user -vvv": run_deploy(with_user, "-vvv")}
    outputs["normal"] = run_deploy(with_user)
    outputs["--dry"] = run_deploy(with_user, "--dry")
    outputs["--diff"] = run_deploy(with_user, "--diff")
    outputs["--json"] = run_deploy(with_user, "--json")
    outputs["-vvv"] = run_deploy(with_user, "-vvv")
    for label, result in outputs.items():
        assert result.returncode == 0, (label, result.stderr[-2000:])
    secret_dir = deployed.info["inventory"].rsplit("/", 1)[0] + "/secrets"
    passwords = {p.read_text().strip() for p in Path(secret_dir).rglob("*.password")}
    values = _secret_values(deployed) | passwords
    assert len(values) >= 3 * 3 + 3 + 4  # 3 secrets and a key per homeserver, 4 passwords
    for label, result in outputs.items():
        text = result.stdout + result.stderr
        leaked = [label for value in values if value in text]
        assert not leaked, f"a secret value appeared in the {label} output"
    modes = deployed.ssh("hs2", "stat -c '%a %U' /etc/matrix-synapse/beta.test/secrets.yaml "
                                "/etc/matrix-synapse/beta.test/signing.key").stdout.split("\n")
    assert all(re.fullmatch(r"600 synapse_beta_test", line) for line in modes if line), modes
    for path in Path(secret_dir).rglob("*.password"):
        assert path.stat().st_mode & 0o777 == 0o600
