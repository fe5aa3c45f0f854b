"""The cached Debian root file system every lab host boots from (read-only overlay lower layer)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from .sources import AptSource, controller_apt_sources, release_sources

RELEASE = "bookworm"
CACHE_DIR = Path("/var/cache/federate")
TARBALL = CACHE_DIR / f"rootfs-{RELEASE}.tar.zst"
TARBALL_STAMP = CACHE_DIR / f"rootfs-{RELEASE}.stamp"
EXTRACTED = CACHE_DIR / f"rootfs-{RELEASE}"
EXTRACTED_STAMP = CACHE_DIR / f"rootfs-{RELEASE}.extracted"

INCLUDE = [
    "systemd", "systemd-sysv", "dbus", "openssh-server", "iproute2", "ca-certificates",
    "python3", "procps", "curl", "sudo", "netbase", "iputils-ping", "less",
]

# Run inside the new root by mmdebstrap: networkd brings up host0 from the per-host .network file;
# host keys and machine-id are made per host, never shared through the cache.
CUSTOMIZE_HOOKS = [
    'chroot "$1" systemctl enable systemd-networkd.service',
    'rm -f "$1"/etc/ssh/ssh_host_*',
    'truncate -s 0 "$1"/etc/machine-id',
]


def build_recipe(sources: list[AptSource]) -> dict:
    """Everything that decides the content of the rootfs; a change means a rebuild."""
    return {"release": RELEASE, "include": INCLUDE, "hooks": CUSTOMIZE_HOOKS,
            "mirrors": [s.one_line() for s in sources]}


def recipe_stamp(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def mmdebstrap_command(recipe: dict, output: Path) -> list[str]:
    command = ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(recipe["include"])]
    command += [f"--customize-hook={hook}" for hook in recipe["hooks"]]
    return command + [recipe["release"], str(output), *recipe["mirrors"]]


def _stamp_matches(path: Path, stamp: str) -> bool:
    return path.exists() and path.read_text().strip() == stamp


def ensure_tarball(log=print) -> str:
    """Build the rootfs tarball unless a cached one was built from the same recipe."""
    sources = release_sources(controller_apt_sources(), RELEASE)
    if not sources:
        raise RuntimeError(f"the controller's apt sources name no {RELEASE} suite to build hosts from")
    recipe = build_recipe(sources)
    stamp = recipe_stamp(recipe)
    if TARBALL.exists() and _stamp_matches(TARBALL_STAMP, stamp):
        return stamp
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log(f"building the {RELEASE} rootfs with mmdebstrap (once, cached in {TARBALL})")
    partial = TARBALL.with_name(TARBALL.name.replace(".tar.zst", ".partial.tar.zst"))
    result = subprocess.run(mmdebstrap_command(recipe, partial), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"mmdebstrap failed:\n{result.stderr[-3000:]}")
    partial.replace(TARBALL)
    TARBALL_STAMP.write_text(stamp + "\n")
    return stamp


def ensure_extracted(stamp: str, log=print) -> Path:
    """The tarball unpacked once into a directory shared read-only by all hosts' overlays."""
    if EXTRACTED.is_dir() and _stamp_matches(EXTRACTED_STAMP, stamp):
        return EXTRACTED
    if in_use():
        raise RuntimeError(f"the rootfs recipe changed but running lab hosts use {EXTRACTED}: "
                           "bring those labs down first")
    log(f"extracting the rootfs to {EXTRACTED}")
    EXTRACTED_STAMP.unlink(missing_ok=True)
    if EXTRACTED.exists():
        shutil.rmtree(EXTRACTED)
    partial = EXTRACTED.with_name(EXTRACTED.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    subprocess.run(["tar", "--zstd", "-xpf", str(TARBALL), "-C", str(partial), "--numeric-owner",
                    "--xattrs", "--xattrs-include=*"], check=True, stdin=subprocess.DEVNULL)
    partial.rename(EXTRACTED)
    EXTRACTED_STAMP.write_text(stamp + "\n")
    return EXTRACTED


def in_use() -> bool:
    """Some overlay mount has the extracted rootfs as its lower layer."""
    mountinfo = Path("/proc/self/mountinfo").read_text()
    return f"lowerdir={EXTRACTED}," in mountinfo or f"lowerdir={EXTRACTED}\n" in mountinfo


def ensure_rootfs(log=print) -> Path:
    """Build (once) and extract (once); a lock keeps labs started in parallel from racing."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return ensure_extracted(ensure_tarball(log), log)
