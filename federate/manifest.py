"""The manifest of a backup folder (`federate backup`): read by the backup's --verify and by the
deploy's restore, which must not depend on the backup command's SSH code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CHUNK = 1 << 20
MANIFEST = "manifest.json"
FORMAT = 1


class BackupError(RuntimeError):
    pass


def database_part(database: str) -> str:
    return "database.dump" if database == "postgres" else "database.sqlite"


def parts(database: str) -> list[str]:
    """The files `federate backup` writes for a homeserver with this kind of database."""
    return [database_part(database), "signing.key", "secrets.yaml", "media.tar", "config.tar"]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for chunk in iter(lambda: source.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path | str, check_hashes: bool = True) -> dict:
    """The manifest of one backup folder, once every file it lists is there with its size (and,
    with `check_hashes`, its sha256). BackupError naming the folder and the file otherwise."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{folder}: no {MANIFEST} (not a backup folder made by `federate backup`)") from None
    except (OSError, ValueError) as error:
        raise BackupError(f"{folder}/{MANIFEST}: unreadable: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise BackupError(f"{folder}/{MANIFEST}: not a format-{FORMAT} manifest of `federate backup`")
    for name, entry in manifest["files"].items():
        part = folder / name
        if not part.is_file():
            raise BackupError(f"{part}: missing (the manifest lists it)")
        if part.stat().st_size != entry["size"]:
            raise BackupError(f"{part}: {part.stat().st_size} bytes, the manifest says {entry['size']}")
        if check_hashes and file_sha256(part) != entry["sha256"]:
            raise BackupError(f"{part}: sha256 differs from the manifest's (damaged or changed)")
    return manifest


def backup_id(folder: Path | str) -> str:
    """What names one backup for good: the sha256 of its manifest (which holds every file's)."""
    return file_sha256(Path(folder) / MANIFEST)
