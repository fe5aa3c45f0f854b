"""`federate backup`'s parts, run here with sh as they run on a host; files written 0600, whole or not at all."""

import hashlib
import io
import sqlite3
import subprocess
import tarfile

import pytest

from federate import backup
from federate.deploy import paths
from federate.settings import host_settings


def homeserver(database="sqlite"):
    s = host_settings("h1", {"database": database, "homeservers": [{"server_name": "g.test"}]})
    return s, s.homeservers[0]


def sh(command: str) -> bytes:
    return subprocess.run(["sh", "-c", command], check=True, capture_output=True).stdout


def test_sqlite_copy_and_local_media_only(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "DATA_ROOT", str(tmp_path))
    s, hs = homeserver()
    store = tmp_path / "g.test" / "media_store"
    for folder in ("local_content", "local_thumbnails", "remote_content"):
        (store / folder / "ab").mkdir(parents=True)
        (store / folder / "ab" / "file").write_text(folder)
    with sqlite3.connect(tmp_path / "g.test" / "homeserver.db") as db:
        db.execute("CREATE TABLE events (body TEXT)")
        db.execute("INSERT INTO events VALUES ('still here')")
    commands = {name: command for name, command, _ in backup.parts(s, hs)}
    assert list(commands) == ["database.sqlite", "signing.key", "secrets.yaml", "media.tar", "config.tar"]
    (tmp_path / "copy.db").write_bytes(sh(commands["database.sqlite"]))
    with sqlite3.connect(tmp_path / "copy.db") as db:
        assert db.execute("SELECT body FROM events").fetchall() == [("still here",)]
    names = tarfile.open(fileobj=io.BytesIO(sh(commands["media.tar"]))).getnames()
    assert "local_content/ab/file" in names and "local_thumbnails/ab/file" in names
    assert not [n for n in names if n.startswith("remote_")]  # remote media is fetched again, not kept
    (store / "local_content").rename(store / "gone")
    (store / "local_thumbnails").rename(store / "gone2")
    assert tarfile.open(fileobj=io.BytesIO(sh(commands["media.tar"]))).getnames() == []  # no media: an empty tar


def test_postgres_dump_leaves_out_one_time_keys():
    s, hs = homeserver("postgres")
    name, command, private = backup.parts(s, hs)[0]
    assert (name, private) == ("database.dump", True)
    assert command == ("runuser -u postgres -- pg_dump -Fc --exclude-table-data=e2e_one_time_keys_json "
                       "synapse_g_test")


def test_files_are_private_and_whole(tmp_path):
    written = backup.write_private(tmp_path / "part", [b"a" * 10, b"b" * 5])
    assert (written.size, written.sha256) == (15, hashlib.sha256(b"a" * 10 + b"b" * 5).hexdigest())
    assert oct((tmp_path / "part").stat().st_mode)[-3:] == "600"

    def broken():
        yield b"half"
        raise backup.BackupError("host h1: pg_dump failed")
    with pytest.raises(backup.BackupError):
        backup.write_private(tmp_path / "broken", broken())
    assert list(tmp_path.iterdir()) == [tmp_path / "part"]  # no half file left
