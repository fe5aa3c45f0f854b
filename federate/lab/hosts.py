"""Lab hosts: an overlay root per host, configured before boot, booted with systemd-nspawn."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

from . import procs

NSPAWN = "systemd-nspawn"
CONTROLLER_CAS = Path("/usr/local/share/ca-certificates")


# --- overlay -------------------------------------------------------------------------------------

def layer_dirs(host_dir: Path) -> dict[str, Path]:
    return {part: host_dir / part for part in ("upper", "work", "merged")}


def mount_overlay(lower: Path, host_dir: Path) -> Path:
    dirs = layer_dirs(host_dir)
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={lower},upperdir={dirs['upper']},workdir={dirs['work']}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(dirs["merged"])],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return dirs["merged"]


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first (nspawn may leave some under the root)."""
    prefix = str(path).rstrip("/")
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(set(points), key=lambda p: -p.count("/"))


def unmount_all(path: Path) -> None:
    for point in mounts_under(path):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)


# --- configuration of a root before boot ---------------------------------------------------------

def _write(root: Path, path: str, text: str, mode: int = 0o644) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        target.unlink()
    target.write_text(text)
    target.chmod(mode)


def network_file(address: str, prefixlen: int, dns: str) -> str:
    """Static address on nspawn's host0, lab DNS, and deliberately no gateway (no default route)."""
    return (f"[Match]\nName=host0\n\n[Network]\nAddress={address}/{prefixlen}\nDNS={dns}\n"
            "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")


def proxy_files(proxy_url: str, no_proxy: list[str], pip_index: str | None,
                pip_extra: list[str]) -> dict[str, str]:
    """apt, pip and the login environment all go through the lab proxy, except for lab traffic."""
    apt = f'Acquire::http::Proxy "{proxy_url}";\nAcquire::https::Proxy "{proxy_url}";\n'
    pip = ["[global]", f"proxy = {proxy_url}", "cert = /etc/ssl/certs/ca-certificates.crt"]
    if pip_index:
        pip.append(f"index-url = {pip_index}")
    if pip_extra:
        pip.append("extra-index-url = " + " ".join(pip_extra))
    skip = ",".join(no_proxy)
    env = (f"http_proxy={proxy_url}\nhttps_proxy={proxy_url}\nno_proxy={skip}\n"
           f"HTTP_PROXY={proxy_url}\nHTTPS_PROXY={proxy_url}\nNO_PROXY={skip}\n")
    return {"/etc/apt/apt.conf.d/80federate-lab-proxy": apt, "/etc/pip.conf": "\n".join(pip) + "\n",
            "/etc/environment": env}


def configure_root(root: Path, *, host: str, address: str, prefixlen: int, dns: str,
                   authorized_key: str, files: dict[str, str], ca_files: dict[str, bytes]) -> None:
    _write(root, "/etc/hostname", host + "\n")
    _write(root, "/etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {host}\n::1 localhost ip6-localhost\n")
    _write(root, "/etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    _write(root, "/etc/resolv.conf", f"nameserver {dns}\n")
    _write(root, "/etc/systemd/network/10-federate-lab.network", network_file(address, prefixlen, dns))
    _write(root, "/etc/ssh/sshd_config.d/federate-lab.conf",
           "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n")
    (root / "root/.ssh").mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(root, "/root/.ssh/authorized_keys", authorized_key, 0o600)
    for path, text in files.items():
        _write(root, path, text)
    regenerate_host_keys(root)
    install_cas(root, ca_files)


def regenerate_host_keys(root: Path) -> None:
    for old in (root / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    subprocess.run(["ssh-keygen", "-A", "-f", str(root)], check=True, capture_output=True,
                   stdin=subprocess.DEVNULL)


def install_cas(root: Path, ca_files: dict[str, bytes]) -> None:
    """The controller's extra CAs plus the lab's, into the host's system trust store."""
    target = root / "usr/local/share/ca-certificates"
    target.mkdir(parents=True, exist_ok=True)
    for name, pem in ca_files.items():
        (target / name).write_bytes(pem)
    subprocess.run(["chroot", str(root), "update-ca-certificates"], check=True, capture_output=True,
                   stdin=subprocess.DEVNULL)


def controller_ca_files() -> dict[str, bytes]:
    if not CONTROLLER_CAS.is_dir():
        return {}
    return {f"controller-{p.name}": p.read_bytes() for p in sorted(CONTROLLER_CAS.rglob("*.crt"))}


def known_hosts_lines(root: Path, address: str) -> list[str]:
    lines = []
    for pub in sorted((root / "etc/ssh").glob("ssh_host_*_key.pub")):
        keytype, key = pub.read_text().split()[:2]
        lines.append(f"{address} {keytype} {key}")
    return lines


# --- boot and reach ------------------------------------------------------------------------------

def nspawn_command(root: Path, machine: str, bridge: str) -> list[str]:
    return [NSPAWN, "-b", "--register=no", "--keep-unit", "--resolv-conf=off", "--timezone=off",
            "--link-journal=no", "--console=read-only", f"--network-bridge={bridge}",
            "-D", str(root), f"--machine={machine}"]


def boot(root: Path, machine: str, bridge: str, log_file: Path, cgroups: list[str]) -> int:
    return procs.spawn(nspawn_command(root, machine, bridge), log_file, cgroups)


def ssh_command(address: str, key: Path, known_hosts: Path, command: str, timeout: int = 10) -> list[str]:
    return ["ssh", "-i", str(key), "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout}",
            "-o", "LogLevel=ERROR", f"root@{address}", command]


def ssh(address: str, key: Path, known_hosts: Path, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(ssh_command(address, key, known_hosts, command), capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=timeout)


def port_open(address: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_ready(address: str, key: Path, known_hosts: Path, pid: int, timeout: float = 120) -> None:
    """Until SSH answers and systemd says the boot finished (`running`, or `degraded`)."""
    deadline = time.monotonic() + timeout
    while not port_open(address, 22):
        if not procs.alive(pid):
            raise RuntimeError(f"host {address}: systemd-nspawn exited during boot")
        if time.monotonic() > deadline:
            raise RuntimeError(f"host {address}: SSH did not answer within {timeout:.0f}s")
        time.sleep(0.2)
    while True:
        result = ssh(address, key, known_hosts, "systemctl is-system-running --wait", timeout=timeout)
        state = result.stdout.strip()
        if state in ("running", "degraded"):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"host {address}: not booted ({state or result.stderr.strip()})")
        time.sleep(0.5)


def remove_host_dir(host_dir: Path) -> None:
    if host_dir.exists() and not mounts_under(host_dir):
        shutil.rmtree(host_dir)
