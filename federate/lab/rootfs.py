"""The cached Debian root file system every lab host boots from (read-only overlay lower layer)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from federate.deploy import debian

from .sources import AptSource, controller_apt_sources, controller_release, sources_for_release

# The Debian releases lab hosts can run: the ones the deploy supports, oldest first.
RELEASES = tuple(release.codename for release in debian.RELEASES.values())
DEFAULT_RELEASE = debian.BOOKWORM.codename
CACHE_DIR = Path("/var/cache/federate")


class Cache:
    """Where one release's rootfs tarball and extracted tree live, with their recipe stamps."""

    def __init__(self, release: str):
        self.release = release
        self.tarball = CACHE_DIR / f"rootfs-{release}.tar.zst"
        self.tarball_stamp = CACHE_DIR / f"rootfs-{release}.stamp"
        self.extracted = CACHE_DIR / f"rootfs-{release}"
        self.extracted_stamp = CACHE_DIR / f"rootfs-{release}.extracted"


def check_release(release: str) -> str:
    if release not in RELEASES:
        raise ValueError(f"release: {release!r} is not a Debian release lab hosts can run "
                         f"(one of: {', '.join(RELEASES)})")
    return release

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


def build_recipe(release: str, sources: list[AptSource]) -> dict:
    """Everything that decides the content of the rootfs; a change means a rebuild."""
    return {"release": release, "include": INCLUDE, "hooks": CUSTOMIZE_HOOKS,
            "mirrors": [s.one_line() for s in sources]}


def recipe_stamp(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def mmdebstrap_command(recipe: dict, output: Path) -> list[str]:
    command = ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(recipe["include"])]
    command += [f"--customize-hook={hook}" for hook in recipe["hooks"]]
    return command + [recipe["release"], str(output), *recipe["mirrors"]]


def _stamp_matches(path: Path, stamp: str) -> bool:
    return path.exists() and path.read_text().strip() == stamp


def host_sources(release: str) -> list[AptSource]:
    """The controller's mirrors for `release` (derived from its own release's suites if need be)."""
    controller = controller_release() or ""
    sources = sources_for_release(controller_apt_sources(), release, controller)
    if not sources:
        raise RuntimeError(f"the controller's apt sources name neither a {release} suite nor one of its own "
                           f"release ({controller or 'unknown'}) to derive the {release} mirrors from")
    return sources


def ensure_tarball(cache: Cache, log=print) -> str:
    """Build the rootfs tarball unless a cached one was built from the same recipe."""
    recipe = build_recipe(cache.release, host_sources(cache.release))
    stamp = recipe_stamp(recipe)
    if cache.tarball.exists() and _stamp_matches(cache.tarball_stamp, stamp):
        return stamp
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log(f"building the {cache.release} rootfs with mmdebstrap (once, cached in {cache.tarball})")
    partial = cache.tarball.with_name(cache.tarball.name.replace(".tar.zst", ".partial.tar.zst"))
    result = subprocess.run(mmdebstrap_command(recipe, partial), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"mmdebstrap failed:\n{result.stderr[-3000:]}")
    partial.replace(cache.tarball)
    cache.tarball_stamp.write_text(stamp + "\n")
    return stamp


def ensure_extracted(cache: Cache, stamp: str, log=print) -> Path:
    """The tarball unpacked once into a directory shared read-only by all hosts' overlays."""
    if cache.extracted.is_dir() and _stamp_matches(cache.extracted_stamp, stamp):
        return cache.extracted
    if in_use(cache.extracted):
        raise RuntimeError(f"the rootfs recipe changed but running lab hosts use {cache.extracted}: "
                           "bring those labs down first")
    log(f"extracting the rootfs to {cache.extracted}")
    cache.extracted_stamp.unlink(missing_ok=True)
    if cache.extracted.exists():
        shutil.rmtree(cache.extracted)
    partial = cache.extracted.with_name(cache.extracted.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    subprocess.run(["tar", "--zstd", "-xpf", str(cache.tarball), "-C", str(partial), "--numeric-owner",
                    "--xattrs", "--xattrs-include=*"], check=True, stdin=subprocess.DEVNULL)
    partial.rename(cache.extracted)
    cache.extracted_stamp.write_text(stamp + "\n")
    return cache.extracted


def in_use(extracted: Path) -> bool:
    """Some overlay mount has the extracted rootfs as its lower layer."""
    mountinfo = Path("/proc/self/mountinfo").read_text()
    return f"lowerdir={extracted}," in mountinfo or f"lowerdir={extracted}\n" in mountinfo


def ensure_rootfs(release: str = DEFAULT_RELEASE, log=print) -> Path:
    """Build (once) and extract (once); a lock keeps labs started in parallel from racing."""
    cache = Cache(check_release(release))
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f".lock-{release}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return ensure_extracted(cache, ensure_tarball(cache, log), log)
