"""Issue (library): a plain `pip install` of the built package deploys from any directory.

The package is built from a copy of the source, installed without extras into a fresh venv
outside the repository, and used from an empty folder holding only an inventory and the
two-line deploy file, against a lab host whose Synapse config and nginx site were removed (so
templates, host-side checks and the federation check of the installed package all do real work).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from federate.lab.clients import Account, login
from federate.lab.runner import REPO_ROOT, changed_names, json_totals, write_inventory

pytestmark = pytest.mark.lab

DEPLOY_FILE = "from federate import deploy_homeservers\ndeploy_homeservers()\n"
BETA = "/etc/matrix-synapse/beta.test"


def run(command: list, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    # without PYTHONPATH: a checkout on it (a worktree under test) would shadow the installed package
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    return subprocess.run([str(c) for c in command], cwd=cwd, text=True, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=timeout, env=env)


async def logs_in(account: Account, info: dict):
    client = await login(account, info["dns"], info["ca_file"])  # raises when the password is wrong
    await client.close()


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with the built federate wheel and no extras."""
    root = tmp_path_factory.mktemp("plain-install")
    source = root / "source"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".lab*", ".secrets", "__pycache__", "*.egg-info", ".pytest_cache", "build"))
    built = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", root / "dist", source])
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (root / "dist").glob("federate-*.whl")
    created = run([sys.executable, "-m", "venv", root / "venv"])
    assert created.returncode == 0, created.stderr
    installed = run([root / "venv/bin/pip", "install", "-q", wheel])
    assert installed.returncode == 0, installed.stderr[-3000:]
    return root / "venv"


def test_no_extra_is_installed_and_the_lab_commands_name_it(venv, deployed):
    assert run([venv / "bin/python", "-c", "import nio"]).returncode != 0
    # the installed package is not the repository's
    where = run([venv / "bin/python", "-c", "import federate; print(federate.__file__)"], cwd="/")
    assert str(venv) in where.stdout and str(REPO_ROOT) not in where.stdout
    proved = run([venv / "bin/federate", "prove", "--lab-json", Path(deployed.inventory).with_name("lab.json")])
    assert proved.returncode == 1 and "pip install 'federate[lab]'" in proved.stderr


def test_federate_check_runs_from_a_plain_install(venv, deployed):
    info = deployed.info
    checked = run([venv / "bin/federate", "check", "beta.test", "--dns-server", info["dns"],
                   "--ca-file", info["ca_file"]], cwd="/")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Federation: OK" in checked.stdout


def test_a_two_line_deploy_from_an_empty_folder_deploys_a_lab_host(venv, deployed, tmp_path):
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    site.mkdir()
    elsewhere.mkdir()

    def only_hs2_with_a_new_user(hosts):
        hosts[:] = [(name, data) for name, data in hosts if name == "hs2"]
        data = hosts[0][1]
        del data["secrets_dir"]  # the default: .secrets beside the inventory
        data["homeservers"][0]["users"] = [{"localpart": "plain"}]
    write_inventory(site / "inventory.py", deployed.inventory, only_hs2_with_a_new_user)
    (site / "deploy.py").write_text(DEPLOY_FILE)
    assert sorted(p.name for p in site.iterdir()) == ["deploy.py", "inventory.py"]

    deployed.ssh("hs2", f"rm {BETA}/homeserver.yaml /etc/nginx/conf.d/federate-beta.test.conf")
    first = run([venv / "bin/pyinfra", "inventory.py", "deploy.py", "-y", "--json"], cwd=site)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-3000:]
    changed = changed_names(first, "hs2")
    for expected in ("beta.test: homeserver.yaml", "beta.test: site", "beta.test: user plain",
                     "beta.test: restart on change", "nginx: reload on change"):
        assert expected in changed, changed
    assert "[PASS] beta.test on hs2" in first.stdout + first.stderr  # the after-deploy federation check

    password_file = site / ".secrets" / "beta.test" / "plain.password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    account = Account("beta.test", "https://beta.test", "plain", password_file.read_text().strip())
    asyncio.run(logs_in(account, deployed.info))

    # federate verify from the plain install: group data and settings read as the deploy read them
    verified = run([venv / "bin/federate", "verify", site / "inventory.py"], cwd=elsewhere)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "[PASS] beta.test on hs2" in verified.stdout

    # From another working directory: the same secrets (beside the inventory), nothing to change.
    again = run([venv / "bin/pyinfra", site / "inventory.py", site / "deploy.py", "-y", "--json"], cwd=elsewhere)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json_totals(again)["success"] == 0, changed_names(again, "hs2")
    assert not (elsewhere / ".secrets").exists() and os.listdir(elsewhere) == []
