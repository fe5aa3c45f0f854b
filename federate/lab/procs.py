"""Starting lab processes detached, each in its own cgroup, and stopping only those we recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

CGROUP_PREFIX = "federate-"


def cgroup_roots() -> list[Path]:
    """Hierarchies where a process is placed by path: systemd's named v1 one and cgroup2.

    Hybrid layout (this controller): /sys/fs/cgroup/systemd (name=systemd) and
    /sys/fs/cgroup/unified (cgroup2). Pure cgroup2: /sys/fs/cgroup itself.
    """
    roots = []
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mountpoint, fstype, options, *_ = line.split()
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options.split(",")):
            roots.append(Path(mountpoint))
    return roots


def make_cgroups(group: str) -> list[str]:
    dirs = []
    for root in cgroup_roots():
        path = root / (CGROUP_PREFIX + group)
        path.mkdir(exist_ok=True)
        dirs.append(str(path))
    return dirs


def cgroup_cpu_seconds(path: str) -> float:
    """CPU time used in a cgroup2 group and below it (its cpu.stat); 0 for a v1 group."""
    stat = Path(path, "cpu.stat")
    if not stat.is_file():
        return 0.0
    fields = dict(line.split() for line in stat.read_text().splitlines() if line.strip())
    return int(fields.get("usage_usec", 0)) / 1e6


def remove_cgroup(path: str) -> None:
    """rmdir bottom-up: nested groups (made by nspawn or systemd) go first; busy ones stay."""
    root = Path(path)
    if not root.name.startswith(CGROUP_PREFIX) or not root.is_dir():
        return
    for dirpath, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def spawn(command: list[str], log_file: Path, cgroups: list[str], env: dict | None = None) -> int:
    """Start detached (own session, stdin /dev/null, output to a log), moved into `cgroups` first."""
    def enter_cgroups():
        for group in cgroups:
            Path(group, "cgroup.procs").write_text(str(os.getpid()))

    with open(log_file, "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True, preexec_fn=enter_cgroups,
                                   env=env, close_fds=True)
    return process.pid


def is_ours(pid: int, exe: str) -> bool:
    """The PID still runs the program we started (guards against a recycled PID)."""
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")) == os.path.basename(exe)
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(processes: list[tuple[int, str]], timeout: float = 20.0) -> None:
    """SIGTERM the recorded processes that are still ours, wait, then SIGKILL what remains."""
    ours = [pid for pid, exe in processes if is_ours(pid, exe)]
    for pid in ours:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while ours and time.monotonic() < deadline:
        for pid in ours:
            reap(pid)
        ours = [pid for pid in ours if alive(pid)]
        time.sleep(0.1)
    for pid in ours:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in ours:
        reap(pid)


def kill_cgroups(cgroups: list[str]) -> None:
    """SIGKILL what is left in cgroups the lab made itself (a host's processes after its nspawn)."""
    for group in cgroups:
        if not Path(group).name.startswith(CGROUP_PREFIX):
            continue
        for dirpath, _, files in os.walk(group):
            if "cgroup.procs" not in files:
                continue
            for line in Path(dirpath, "cgroup.procs").read_text().split():
                try:
                    os.kill(int(line), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
