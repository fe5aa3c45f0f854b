"""`federate drift INVENTORY`: the deploy run read-only (pyinfra --dry), naming what would change.

For cron and CI: exit status 0 when every host is as the settings say, 1 when something drifted,
2 when the check itself failed. It never takes the deploy lock and changes nothing. The output
holds operation names only (no arguments, no file content, so no secret).

Each host gets its own dry run (`--limit`, run side by side): pyinfra's plan shares one name
among the same operation on several hosts, and a per-host run keeps each host's own names.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.resources import as_file, files

from federate.inventory import load_inventory

DEPLOY_FILE = files("federate.deploy").joinpath("playbook/deploy.py")
PARALLEL_RUNS = 4


@dataclass
class Drift:
    changes: dict[str, list[str]] = field(default_factory=dict)  # host -> operations that would change it
    errors: dict[str, str] = field(default_factory=dict)         # host -> why its check failed

    @property
    def ok(self) -> bool:
        return not self.errors


def check_drift(inventory: str, deploy_file: str | None = None, timeout: int = 600) -> Drift:
    hosts = [host.name for host in load_inventory(inventory)]
    drift = Drift()
    with as_file(DEPLOY_FILE) as shipped, ThreadPoolExecutor(max_workers=PARALLEL_RUNS) as pool:
        deploy = deploy_file or str(shipped)
        for host, (changes, error) in zip(hosts, pool.map(lambda h: _dry_run(inventory, deploy, h, timeout), hosts)):
            if changes:
                drift.changes[host] = changes
            if error:
                drift.errors[host] = error
    return drift


def _dry_run(inventory: str, deploy: str, host: str, timeout: int) -> tuple[list[str], str]:
    # no -y: with it pyinfra skips change detection; --dry never asks for confirmation
    command = [sys.executable, "-m", "pyinfra", inventory, deploy, "--dry", "--json", "--limit", host]
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    try:
        plan = json.loads(result.stdout[result.stdout.index("{"):])["plan"]
    except ValueError:
        plan = []
    changes = [op["name"] for op in plan if host in op["hosts_with_change"]]
    if result.returncode != 0 or not plan:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip() and not line.startswith("-->")]
        return changes, "; ".join(lines[-3:]) or f"pyinfra exited with {result.returncode}"
    return changes, ""


def format_drift(drift: Drift) -> str:
    lines = []
    for host, error in sorted(drift.errors.items()):
        lines.append(f"  {host}: the check failed: {error}")
    for host, names in sorted(drift.changes.items()):
        lines += [f"  {host}: {name}" for name in names]
    if not drift.changes and drift.ok:
        return "federate drift: no drift, every host is as its settings say"
    head = f"federate drift: {len(drift.changes)} host(s) drifted (a deploy run would repair this)"
    if drift.errors:
        head += f", {len(drift.errors)} host(s) could not be checked"
    return "\n".join([head + ":", *lines])
