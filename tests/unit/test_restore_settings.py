"""restore_from: a backup folder checked against its manifest before any host is touched, and the
host-side restore script (order, single transaction, the marker last)."""

import hashlib
import json
from pathlib import Path

import pytest

from federate.deploy.restore import _restore_script
from federate.manifest import backup_id
from federate.settings import SettingsError, host_settings

PARTS = {"database.dump": b"PGDMP fake", "signing.key": b"ed25519 a_abcd key\n", "secrets.yaml": b"a: b\n",
         "media.tar": b"\0" * 1024, "config.tar": b"\0" * 1024}


def backup_folder(tmp_path: Path, server_name="alpha.test", database="postgres", version="1.163.2") -> Path:
    folder = tmp_path / server_name / "20261130T170000Z"
    folder.mkdir(parents=True)
    files = {}
    for name, content in PARTS.items():
        (folder / name).write_bytes(content)
        files[name] = {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps({
        "format": 1, "server_name": server_name, "host": "h0", "synapse_version": version,
        "database": database, "created": "20261130T170000Z", "files": files}))
    return folder


def data(folder, **overrides):
    return {"synapse_version": "1.163.2", "proxy": "nginx", "firewall": "ufw", "database": "postgres",
            "tls": {"mode": "acme", "acme_directory": "https://acme.test/dir"},
            "homeservers": [{"server_name": "alpha.test", "restore_from": str(folder)}],
            "ssh_user": "root", "ssh_key": "/k", **overrides}


def refusal(host_data, base_dir=".") -> str:
    with pytest.raises(SettingsError) as err:
        host_settings("h1", host_data, base_dir)
    assert err.value.field == "homeservers[0].restore_from", str(err.value)
    return err.value.problem


def test_a_matching_backup_is_accepted_with_its_id(tmp_path):
    folder = backup_folder(tmp_path)
    restore = host_settings("h1", data(folder)).homeservers[0].restore
    assert restore.folder == str(folder) and restore.backup_id == backup_id(folder)
    assert restore.synapse_version == "1.163.2"
    assert restore.signing_key_sha256 == hashlib.sha256(PARTS["signing.key"]).hexdigest()


def test_relative_folders_are_relative_to_the_inventory(tmp_path):
    backup_folder(tmp_path)
    restore = host_settings("h1", data("alpha.test/20261130T170000Z"), base_dir=tmp_path).homeservers[0].restore
    assert restore.folder == str(tmp_path / "alpha.test" / "20261130T170000Z")


def test_no_restore_without_the_setting(tmp_path):
    assert host_settings("h1", {**data(tmp_path), "homeservers": [{"server_name": "alpha.test"}]}) \
        .homeservers[0].restore is None


def test_not_a_backup_folder(tmp_path):
    assert "no manifest.json" in refusal(data(tmp_path))


def test_a_backup_of_another_server_name(tmp_path):
    assert "is a backup of 'beta.test', not of 'alpha.test'" in refusal(data(backup_folder(tmp_path, "beta.test")))


def test_a_backup_of_another_database(tmp_path):
    assert "holds a sqlite database" in refusal(data(backup_folder(tmp_path, database="sqlite")))


def test_a_backup_made_by_a_newer_synapse(tmp_path):
    assert "newer than synapse_version 1.163.2" in refusal(data(backup_folder(tmp_path, version="1.200.0")))


def test_a_missing_or_truncated_part(tmp_path):
    folder = backup_folder(tmp_path)
    (folder / "media.tar").write_bytes(b"\0" * 10)
    assert "media.tar: 10 bytes, the manifest says 1024" in refusal(data(folder))
    (folder / "media.tar").unlink()
    assert "media.tar: missing" in refusal(data(folder))


def test_a_backup_without_a_part_a_restore_needs(tmp_path):
    folder = backup_folder(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"]["secrets.yaml"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert "the backup has no secrets.yaml" in refusal(data(folder))


def test_the_script_restores_in_one_transaction_and_marks_last(tmp_path):
    settings = host_settings("h1", data(backup_folder(tmp_path)))
    steps = _restore_script(settings, settings.homeservers[0]).split(" && ")
    restore = next(s for s in steps if "pg_restore" in s)
    assert "--single-transaction" in restore and "--exit-on-error" in restore
    assert "--role=synapse_alpha_test" in restore and "-d synapse_alpha_test" in restore
    marker = next(i for i, s in enumerate(steps) if s.startswith("mv ") and "/var/lib/federate/restored/" in s)
    assert steps.index(restore) < marker < next(i for i, s in enumerate(steps) if s.startswith("rm -rf"))
    assert all(step in " ".join(steps) for step in ("signing.key", "secrets.yaml", "media.tar"))
