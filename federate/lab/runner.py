"""Running the deploy exactly as a user does (`pyinfra INVENTORY deploy.py -y`), for tests and benchmarks."""

from __future__ import annotations

import json
import pprint
import re
import runpy
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).parent / "pyinfra")


def run_deploy(inventory: str, *extra: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run the playbook from the repo root (where group_data/ lives), never waiting on stdin. A
    --dry run gets no -y: with -y pyinfra skips change detection, and --dry asks nothing."""
    confirm = [] if "--dry" in extra else ["-y"]
    return subprocess.run([PYINFRA, inventory, "deploy.py", *confirm, *extra], cwd=REPO_ROOT, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout)


def run_deployed(inventory: str) -> subprocess.CompletedProcess:
    """A deploy that must succeed: a lab fixture's first run (the output's tail when it does not)."""
    result = run_deploy(inventory)
    assert result.returncode == 0, (f"deploy failed:\n{error_lines(result.stderr + result.stdout)}\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def error_lines(output: str, limit: int = 40) -> str:
    """The lines of a run that say what went wrong (the summary table at its end does not)."""
    wanted = [line for line in output.splitlines() if re.search(r"error|fail|stderr", line, re.IGNORECASE)
              and "Grand total" not in line]
    return "\n".join(wanted[-limit:])


def json_totals(result: subprocess.CompletedProcess) -> dict:
    """`results.totals` of a `--json` run; its `success` counts operations that changed something."""
    return json_document(result)["results"]["totals"]


def json_document(result: subprocess.CompletedProcess) -> dict:
    """The JSON document a `--json` (or `--dry --json`) run prints after its log lines."""
    return json.loads(result.stdout[result.stdout.index("{"):])


def changed_operations(result: subprocess.CompletedProcess, host: str) -> list[list[str]]:
    """The names of the operations of a `--json` run that changed something on `host`."""
    document = json_document(result)
    return [op["names"] for op in document["results"]["operations"] if host in op["success"]]


def changed_names(result: subprocess.CompletedProcess, host: str) -> set[str]:
    """Names of the operations that changed `host`, without their deploy's prefix."""
    return {name.split(" | ")[-1] for names in changed_operations(result, host) for name in names}


def assert_converged(inventory: str, *extra: str) -> subprocess.CompletedProcess:
    """A `--json` re-run (with `extra` arguments, e.g. --limit) that succeeds, with no failed and no
    changed operation on any host."""
    result = run_deploy(inventory, "--json", *extra)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    totals = json_totals(result)
    changed = [(op["names"], op["success"]) for op in json_document(result)["results"]["operations"]
               if op["success"]]
    assert totals["error"] == 0 and totals["success"] == 0, (totals, changed)
    return result


def write_inventory(path: Path, source: str, *mutations) -> str:
    """A copy of a lab inventory file with each `mutate(hosts)` applied to its (name, data) list."""
    hosts = runpy.run_path(source)["lab_hosts"]
    for mutate in mutations:
        mutate(hosts)
    path.write_text("lab_hosts = " + pprint.pformat(hosts, width=110) + "\n")
    return str(path)
