"""The dump before a Synapse version change: complete or absent, root-only, the newest few kept.
(The lifecycle lab test runs it on PostgreSQL hosts of both releases.)"""

import sqlite3
import subprocess

from federate.deploy import dumps


def test_sqlite_dump_is_a_complete_copy_and_only_the_newest_are_kept(tmp_path, monkeypatch):
    source = tmp_path / "homeserver.db"
    with sqlite3.connect(source) as db:
        db.execute("CREATE TABLE events (body TEXT)")
        db.execute("INSERT INTO events VALUES ('still here')")
    monkeypatch.setattr(dumps, "DUMPS_ROOT", str(tmp_path / "dumps"))
    command = dumps.dump_command(f"sqlite:{source}", "g.test", "1.162.0")
    assert command.startswith(f"install -d -m 700 -o root -g root {tmp_path}/dumps {tmp_path}/dumps/g.test && ")
    for _ in range(dumps.KEEP + 2):  # the date in the name has seconds: make them differ
        subprocess.run(["sh", "-c", command.replace("$(date -u +%Y%m%dT%H%M%SZ)", "$(date +%s%N)")], check=True)
    kept = sorted((tmp_path / "dumps" / "g.test").iterdir())
    assert len(kept) == dumps.KEEP and all(p.name.startswith("g.test-1.162.0-") and p.suffix == ".db" for p in kept)
    assert all(oct(p.stat().st_mode)[-3:] == "600" for p in kept)
    with sqlite3.connect(kept[-1]) as db:
        assert db.execute("SELECT body FROM events").fetchall() == [("still here",)]


def test_a_sqlite_homeserver_without_a_database_yet_is_skipped_and_a_failed_dump_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(dumps, "DUMPS_ROOT", str(tmp_path / "dumps"))
    fresh = dumps.dump_command(f"sqlite:{tmp_path}/new/homeserver.db", "new.test", "1.162.0")
    subprocess.run(["sh", "-c", fresh], check=True)  # no database yet: nothing to dump, no failure
    assert list((tmp_path / "dumps" / "new.test").iterdir()) == []
    (tmp_path / "broken.db").write_text("not a database")
    broken = dumps.dump_command(f"sqlite:{tmp_path}/broken.db", "broken.test", "1.162.0")
    assert subprocess.run(["sh", "-c", broken]).returncode != 0
    assert list((tmp_path / "dumps" / "broken.test").iterdir()) == []  # no .part left behind


def test_postgres_dump_uses_the_custom_format_as_postgres():
    command = dumps.dump_command("postgres:synapse_g_test", "g.test", "1.162.0")
    assert "runuser -u postgres -- pg_dump -Fc synapse_g_test > \"$t.part\" && { [ ! -e \"$t.part\" ] || mv \"$t.part\" \"$t\"; }" in command
    assert "/var/backups/federate/g.test/g.test-1.162.0-" in command
