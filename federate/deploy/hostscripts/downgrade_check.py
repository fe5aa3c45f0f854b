"""Refuse a Synapse downgrade that the homeservers' databases cannot take.

Usage: python downgrade_check.py TARGET_VERSION sqlite:PATH|postgres:NAME ...
Runs on the host with the venv's pip. Synapse records in each database the oldest schema
its data still works with (schema_compat_version); the target release's own schema version
(SCHEMA_VERSION in its wheel) must not be older than that. Prints "ok" or "refused: ...".
"""

import glob
import re
import sqlite3
import subprocess
import sys
import tempfile
import zipfile


def target_schema_version(version: str) -> int:
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", folder,
                        f"matrix-synapse=={version}"], check=True)
        wheel = glob.glob(f"{folder}/*.whl")[0]
        with zipfile.ZipFile(wheel) as archive:
            text = archive.read("synapse/storage/schema/__init__.py").decode()
    return int(re.search(r"^SCHEMA_VERSION\s*=\s*(\d+)", text, re.M).group(1))


QUERY = "SELECT compat_version FROM schema_compat_version"


def compat_version(reference: str) -> int | None:
    """None when there is no database yet, or not one Synapse has set up: nothing to protect."""
    kind, _, name = reference.partition(":")
    if kind == "postgres":
        reply = subprocess.run(["su", "postgres", "-c", f"psql -Atc '{QUERY}' {name}"],
                               capture_output=True, text=True)
        value = reply.stdout.strip()
        return int(value) if reply.returncode == 0 and value.isdigit() else None
    try:
        with sqlite3.connect(f"file:{name}?mode=ro", uri=True) as db:
            row = db.execute(QUERY).fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def main() -> int:
    target, databases = sys.argv[1], sys.argv[2:]
    schema = target_schema_version(target)
    refused = []
    for database in databases:
        needed = compat_version(database)
        if needed is not None and needed > schema:
            refused.append(f"{database} needs schema {needed} or newer; Synapse {target} has schema {schema}")
    if refused:
        print(f"refused: downgrade to Synapse {target} refused, the database cannot take it: "
              + "; ".join(refused) + ". Pick a newer synapse_version.")
    else:
        print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
