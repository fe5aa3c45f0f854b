"""Inventories are loaded by pyinfra's own code: `federate verify` sees what the deploy sees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from federate.inventory import host_data, load_inventory, load_settings
from federate.settings import DEFAULTS, LETS_ENCRYPT

PYINFRA = str(Path(sys.executable).parent / "pyinfra")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """An inventory with group data beside it, and a working directory elsewhere with its own."""
    folder, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    (folder / "group_data").mkdir(parents=True)
    (elsewhere / "group_data").mkdir(parents=True)
    (folder / "inventory.py").write_text(
        "servers = [('hs1.invalid', {'homeservers': [{'server_name': 'a.test'}]}),\n"
        "           ('hs2.invalid', {'homeservers': [{'server_name': 'b.test'}], 'max_upload_size': '5M'})]\n")
    # a key set only in a group's file, one in all.py, and one the working directory's all.py sets
    (folder / "group_data" / "servers.py").write_text(
        "max_upload_size = '77M'\nverify = {'timeout': 4, 'after_deploy': False}\n")
    (folder / "group_data" / "all.py").write_text("firewall = 'nftables'\n")
    (elsewhere / "group_data" / "all.py").write_text("proxy = 'caddy'\nfirewall = 'ufw'\n")
    monkeypatch.chdir(elsewhere)
    return folder / "inventory.py"


def pyinfra_host_data(inventory: Path) -> dict[str, dict]:
    """The host data the pyinfra CLI gives a deploy run from the current directory."""
    result = subprocess.run([PYINFRA, str(inventory), "debug-inventory", "--json"], text=True,
                            capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout[result.stdout.index("["):])
    return {entry["name"]: entry["data"] for entry in document}


def test_group_data_is_seen_exactly_as_the_deploy_sees_it(site):
    seen_by_deploy = pyinfra_host_data(site)
    assert dict(host_data(load_inventory(site))) == seen_by_deploy
    settings = load_settings(site)
    hs1, hs2 = settings["hs1.invalid"], settings["hs2.invalid"]
    # group_data/servers.py (beside the inventory) reaches verify's settings
    assert (hs1.max_upload_size, hs1.verify.timeout, hs1.verify.after_deploy) == ("77M", 4.0, False)
    assert hs2.max_upload_size == "5M"  # host data wins over group data
    # group_data beside the inventory is read after the working directory's, so it wins
    assert (hs1.proxy, hs1.firewall) == ("caddy", "nftables")


def test_an_inventory_without_group_data_gets_the_library_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inventory.py").write_text("hosts = [('hs1.invalid', {'homeservers': [{'server_name': 'a.test'}]})]\n")
    settings = load_settings(tmp_path / "inventory.py")["hs1.invalid"]
    assert (settings.synapse_version, settings.proxy, settings.firewall, settings.database) == (
        DEFAULTS["synapse_version"], "nginx", "ufw", "postgres")
    assert (settings.tls.mode, settings.tls.acme_directory, settings.max_upload_size) == ("acme", LETS_ENCRYPT, "50M")


def test_secrets_dir_is_relative_to_the_inventory_not_the_working_directory(site):
    settings = load_settings(site)["hs1.invalid"]
    assert settings.secrets_dir == str(site.parent / ".secrets")


def test_a_missing_inventory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no inventory file"):
        load_inventory(tmp_path / "nope.py")


def test_schema_describes_host_data_and_allows_connector_keys(capsys):
    from federate import cli

    assert cli.main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    properties = schema["properties"]
    assert properties["proxy"]["enum"] == ["nginx", "caddy"] and properties["proxy"]["default"] == "nginx"
    assert properties["synapse_version"]["default"] == DEFAULTS["synapse_version"]
    assert schema["additionalProperties"] is False and "^ssh_" in schema["patternProperties"]
    homeserver = schema["$defs"]["HomeserverData"]
    assert homeserver["required"] == ["server_name"] and homeserver["additionalProperties"] is False
    assert all(field.get("description") for field in properties.values())


def test_the_deploy_resolves_secrets_dir_beside_the_inventory_from_any_directory(tmp_path):
    """A real pyinfra run (the @local connector, --dry, no operation) of a deploy that reports
    what its settings say, started from another directory."""
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    site.mkdir()
    elsewhere.mkdir()
    (site / "inventory.py").write_text("hosts = [('@local', {'homeservers': [{'server_name': 'a.test'}]})]\n")
    (site / "report.py").write_text(
        "import sys\nfrom pyinfra import host, inventory\nfrom federate.inventory import settings_for\n"
        "sys.stderr.write('SECRETS=' + settings_for(inventory, host).secrets_dir + '\\n')\n")
    result = subprocess.run([PYINFRA, "-y", str(site / "inventory.py"), str(site / "report.py"), "--dry"],
                            cwd=elsewhere, text=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
    assert f"SECRETS={site / '.secrets'}\n" in result.stderr, result.stderr[-2000:]
