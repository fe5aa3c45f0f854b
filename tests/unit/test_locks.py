"""Synapse's locks: shipped for the default version on every supported Python, every package
pinned and hashed; the deploy installs a host's venv from the lock of its release's Python and
only when the venv differs from it; `federate synapse-lock` makes the same lock again."""

from __future__ import annotations

import logging
import shlex
import shutil
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from pyinfra.context import ctx_host

from federate.cli import build_parser
from federate.deploy import locks, synapse
from federate.deploy.database import driver_requirements
from federate.deploy.debian import BOOKWORM, RELEASES, TRIXIE
from federate.deploy.hostscripts import uv_install as uv_script
from federate.deploy.venv import (INSTALL_LOCK, INSTALL_STATUS, INSTALL_WAIT, VenvDistributions,
                                  VenvState, uv_install, venv_differences, venv_made_beside, venv_matches)
from federate.host_data import SYNAPSE_VERSION
from test_pyinfra_ext import FakeHost, commands, fact

PYTHONS = sorted({r.python for r in RELEASES.values()})
VENV, REQS = "/opt/matrix-synapse/venv", "/opt/matrix-synapse/requirements.txt"
PIP = f"{VENV}/bin/python -m pip --disable-pip-version-check"


@pytest.mark.parametrize("python", PYTHONS)
def test_the_default_version_ships_a_lock_for_each_release_python(python):
    text = locks.shipped(SYNAPSE_VERSION, python)
    assert text is not None, f"no lock: run {locks.regenerate_command(SYNAPSE_VERSION, python)}"
    pins = locks.pins(text)  # every requirement pinned with == and hashed, no URL
    assert pins["matrix-synapse"] == SYNAPSE_VERSION
    driver, version = driver_requirements()[0].split("==")
    assert pins[canonicalize_name(driver)] == version
    assert len(pins) > 30  # Twisted, cryptography, ... : the whole tree, not the two top-level pins
    assert f"CPython {python}" in text and locks.regenerate_command(SYNAPSE_VERSION, python) in text
    for option in ("--index-url", "--extra-index-url", "--find-links", "--trusted-host", "-e "):
        assert option not in text  # nothing of the machine that made it


@pytest.mark.parametrize("python", PYTHONS)
def test_every_line_of_a_lock_is_a_pin_a_hash_or_a_comment(python):
    text = locks.shipped(SYNAPSE_VERSION, python)
    for line in text.splitlines():
        stripped = line.strip()
        assert (stripped.startswith("#") or stripped.startswith("--hash=sha256:")
                or (not line.startswith(" ") and "==" in stripped and stripped.endswith("\\"))), line


@pytest.mark.parametrize("text, why", [
    ("matrix-synapse>=1.0 --hash=sha256:00\n", "not pinned"),
    ("matrix-synapse==1.0\n", "no --hash"),
    ("twisted==24.1 \\\n  --hash=sha256:00\nidna\n", "idna: not pinned"),
    ("foo @ https://example.invalid/foo.whl --hash=sha256:00\n", "URL"),
    ("foo==1 ; python_version < '3.12' --hash=sha256:00\n", "markers"),
    ("# only a comment\n", "no requirement"),
])
def test_pins_refuse_what_is_not_a_lock(text, why):
    with pytest.raises(ValueError, match=why):
        locks.pins(text)


def test_pins_of_a_lock_and_of_the_plain_pins():
    text = "Twisted==24.11.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n    # via matrix-synapse\nzope.interface==7.2 --hash=sha256:cc\n"
    assert locks.pins(text) == {"twisted": "24.11.0", "zope-interface": "7.2"}
    plain = locks.unlocked("1.200.0")
    assert locks.pins(plain, require_hashes=False) == {"matrix-synapse": "1.200.0", "psycopg2-binary": "2.9.13"}
    assert "federate synapse-lock 1.200.0" in plain
    # a homeserver with workers and no lock: Synapse's redis extra in the plain pins, never in a lock
    with_redis = locks.unlocked("1.200.0", redis=True)
    assert "matrix-synapse[redis]==1.200.0" in with_redis
    assert locks.pins(with_redis, require_hashes=False) == {"matrix-synapse": "1.200.0", "psycopg2-binary": "2.9.13"}
    with pytest.raises(ValueError, match="extras"):
        locks.pins("matrix-synapse[redis]==1.200.0 --hash=sha256:aa\n")


class NamedHost(FakeHost):
    name = "hs9"


def test_the_deploy_picks_the_lock_of_the_release_python():
    for release in (BOOKWORM, TRIXIE):
        text, locked = synapse.venv_requirements(SYNAPSE_VERSION, release)
        assert locked and text == locks.shipped(SYNAPSE_VERSION, release.python)
        assert f"CPython {release.python}" in text


def test_without_a_lock_the_deploy_warns_and_pins_only_the_top_level(caplog):
    with ctx_host.use(NamedHost({})), caplog.at_level(logging.WARNING):
        text, locked = synapse.venv_requirements("1.0.0", TRIXIE)
    assert not locked and text == locks.unlocked("1.0.0")
    warning = caplog.text
    assert "hs9: synapse_version 1.0.0 has no lock for Python 3.13" in warning
    assert "federate synapse-lock 1.0.0" in warning


# --- venv_matches: facts in, commands out ---------------------------------------------------------

def venv_facts(state: str, installed: dict | None = None) -> dict:
    return {**fact(VenvState, state, venv=VENV), **fact(VenvDistributions, installed or {}, venv=VENV)}


LOCK = {"matrix-synapse": "1.163.2", "attrs": "26.1.0", "setuptools": "84.2.1"}
RESTART = "/var/lib/federate/pending/restart-x"
OWE = f"mkdir -p /var/lib/federate/pending && touch {RESTART}"
LOCKED = locks.LOCKED_INSTALL.split()
INSTALL = uv_install(VENV, REQS, *LOCKED).get_raw_value()


def venv_commands(state, installed=None, wanted=LOCK, locked=True):
    return commands(venv_matches, venv_facts(state, installed), venv=VENV, requirements=REQS, wanted=wanted,
                    locked=locked, owes=[RESTART])


def test_a_venv_that_matches_its_lock_is_left_alone():
    # pip and wheel come with the venv; versions compare as versions
    assert venv_commands("ok", {**LOCK, "attrs": "26.1", "pip": "23.0.1", "wheel": "0.45"}) == []


def test_a_missing_venv_is_made_with_debian_python_and_filled_from_the_lock():
    assert venv_commands("absent") == [OWE, f"rm -rf {VENV} && python3 -m venv {VENV}", INSTALL]


def test_a_package_at_another_version_or_missing_is_installed_from_the_lock():
    assert venv_commands("ok", {**LOCK, "attrs": "25.4.0"}) == [OWE, INSTALL]
    missing = {k: v for k, v in LOCK.items() if k != "attrs"}
    assert venv_commands("inconsistent", missing) == [OWE, INSTALL]  # pip check fails: attrs is gone


def test_packages_the_lock_lacks_are_removed():
    assert venv_commands("ok", {**LOCK, "six": "1.17.0", "frozendict": "2.4"}) == [
        OWE, INSTALL, f"{PIP} uninstall -y frozendict six"]


def test_an_inconsistent_venv_with_the_right_versions_is_reinstalled():
    assert venv_commands("inconsistent", LOCK) == [OWE, uv_install(VENV, REQS, *LOCKED, "--reinstall").get_raw_value()]


def beside_commands(state, installed=None):
    return commands(venv_made_beside, venv_facts(state, installed), venv=VENV, requirements=REQS, wanted=LOCK,
                    locked=True, owes=[RESTART])


def test_a_venv_to_be_made_is_made_in_a_background_job_that_holds_the_install_lock():
    owed, job = beside_commands("absent")
    assert owed == OWE  # owed before the job starts
    words = shlex.split(job)
    script = words[words.index("-c") + 1]  # the job, as `setsid -f sh -c` runs it
    assert script.startswith("umask 022; { " + f"rm -rf {VENV} && python3 -m venv {VENV} && {INSTALL}")
    assert script.endswith(f"; }}; echo $? > {INSTALL_STATUS}")
    # the lock is taken before the job starts and handed down to it
    assert job.index(f"flock -w {INSTALL_WAIT} 9") < job.index("setsid -f") and job.endswith(f"9> {INSTALL_LOCK}")
    assert beside_commands("broken")[1] == job


def test_a_venv_that_exists_is_left_to_venv_matches():
    assert beside_commands("ok") == []
    assert beside_commands("ok", {**LOCK, "attrs": "25.4.0"}) == []  # changed only right before its restart
    assert beside_commands("inconsistent", LOCK) == []


def test_every_fact_about_the_venv_waits_for_a_background_install():
    for fact in (VenvState(), VenvDistributions()):
        assert fact.command(venv=VENV).startswith(f"flock -w {INSTALL_WAIT} {INSTALL_LOCK} true")


def test_without_a_lock_only_the_top_level_pins_count():
    pins = {"matrix-synapse": "1.200.0", "psycopg2-binary": "2.9.13"}
    assert venv_commands("ok", {**pins, "six": "1.0"}, wanted=pins, locked=False) == []
    assert venv_commands("ok", {"matrix-synapse": "1.163.2", "psycopg2-binary": "2.9.13"}, wanted=pins,
                         locked=False) == [OWE, uv_install(VENV, REQS).get_raw_value()]


def test_uv_installs_the_lock_into_the_venv_with_its_python_and_comes_from_its_own_lock():
    command = uv_install(VENV, REQS, *LOCKED).get_raw_value()
    script, _, arguments = command.partition(" -c ")
    assert script.endswith(f"{VENV}/bin/python")  # the venv's pip installs uv, and reads pip's settings
    for wanted in (f"--python {VENV}/bin/python", "--compile-bytecode", "--no-config", locks.LOCKED_INSTALL,
                   f"-r {REQS}", f"/opt/matrix-synapse/uv {locks.UV_VERSION} "):
        assert wanted in arguments
    assert locks.pins(locks.uv_lock()) == {"uv": locks.UV_VERSION}
    assert locks.uv_lock().count("--hash=sha256:") > 10  # every platform's wheel: x86_64 and arm64 hosts alike
    assert locks.uv_lock() in uv_script_argument(command)


def uv_script_argument(command: str) -> str:
    import shlex
    words = shlex.split(command)
    return words[words.index("--") - 1]


def test_uv_gets_the_index_settings_pip_would_use():
    listing = "\n".join([
        "global.index-url='https://mirror.invalid/simple'", "global.proxy='http://10.0.0.1:3128'",
        "global.cert='/etc/ssl/certs/ca-certificates.crt'", "install.extra-index-url='https://a.invalid/s https://b.invalid/s'",
        "global.find-links='/srv/w1 /srv/w2'", "global.trusted-host='a.invalid'", "global.cache-dir='/x'",
        ":env:.index-url='https://env.invalid/simple'", ":env:.default-timeout='90'", ":env:.no-index='yes'",
        "download.index-url='https://download-only.invalid/simple'"])
    settings = uv_script.pip_settings(listing)
    assert settings["index-url"] == "https://env.invalid/simple"  # PIP_* over [install] over [global]
    env, arguments = uv_script.uv_environment(settings)
    assert env == {"UV_INDEX_URL": "https://env.invalid/simple", "UV_EXTRA_INDEX_URL": "https://a.invalid/s https://b.invalid/s",
                   "UV_FIND_LINKS": "/srv/w1,/srv/w2", "UV_INSECURE_HOST": "a.invalid",
                   "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt", "UV_HTTP_TIMEOUT": "90",
                   **{name: "http://10.0.0.1:3128" for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")}}
    assert arguments == ["--no-index"]
    assert uv_script.uv_environment(uv_script.pip_settings("")) == ({}, [])  # no config: uv's default index, as pip's


def test_venv_differences():
    assert venv_differences({"a": "1.0"}, {"a": "1"}, complete=True) == ([], [])
    assert venv_differences({"a": "1.0", "b": "2"}, {"a": "1.1", "c": "3", "pip": "25"}, complete=True) == (
        ["a", "b"], ["c"])
    assert venv_differences({"a": "1.0"}, {"c": "3"}, complete=False) == (["a"], [])


def test_the_venv_distributions_fact_names_are_canonical():
    assert VenvDistributions().process(["PyYAML 6.0.4", "zope.interface 8.7", "None 1.0", ""]) == {
        "pyyaml": "6.0.4", "zope-interface": "8.7"}



def test_the_venv_facts_read_what_importlib_metadata_finds(tmp_path):
    """The shell's reading of a real venv's metadata (a new venv holding the metadata of this test
    run's own distributions, dozens, and matrix-synapse's) is importlib.metadata's, as the venv's
    Python gives it; a venv whose interpreter is gone has none."""
    import subprocess
    import sys
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    for info in Path(sysconfig.get_paths()["purelib"]).glob("*.dist-info"):
        shutil.copytree(info, site / info.name)
    (site / "matrix_synapse-1.163.2.dist-info").mkdir()
    (site / "matrix_synapse-1.163.2.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: matrix-synapse\nVersion: 1.163.2\n\nVersion: 9 in the description\n")

    def shell(fact, path=venv):
        command = fact.command(venv=str(path)).replace(f"flock -w {INSTALL_WAIT} {INSTALL_LOCK} true", "true")
        return fact.process(subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                                           check=True).stdout.splitlines())
    script = "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'], d.version)"
    theirs = VenvDistributions().process(subprocess.run([f"{venv}/bin/python", "-I", "-c", script], capture_output=True,
                                                        text=True, check=True).stdout.splitlines())
    assert len(theirs) > 20 and theirs["matrix-synapse"] == "1.163.2"
    assert shell(VenvDistributions()) == theirs
    (tmp_path / "gone" / "bin").mkdir(parents=True)
    (tmp_path / "gone" / "bin" / "python").symlink_to(tmp_path / "nowhere" / "python3.11")
    assert shell(VenvDistributions(), tmp_path / "gone") == {}

# --- federate synapse-lock: the real command, from the index the controller's pip uses -------------

def test_synapse_lock_makes_the_shipped_lock_again(tmp_path, capsys):
    """Run with the shipped lock in place (as when it is regenerated in the repository): the same
    pins come out, each hashed, with nothing of this machine in the file."""
    python = PYTHONS[0]
    name = locks.lock_name(SYNAPSE_VERSION, python)
    shutil.copyfile(locks.LOCK_DIR / name, tmp_path / name)
    args = build_parser().parse_args(["synapse-lock", SYNAPSE_VERSION, "--python", python, "--out", str(tmp_path)])
    assert args.handler(args) == 0
    made = (tmp_path / name).read_text()
    assert locks.pins(made) == locks.pins(locks.shipped(SYNAPSE_VERSION, python))
    assert made.splitlines()[:3] == locks.header(SYNAPSE_VERSION, python).splitlines()
    assert locks.pins((tmp_path / locks.uv_lock_name()).read_text()) == {"uv": locks.UV_VERSION}  # uv's own too
    assert (tmp_path / locks.uv_lock_name()).read_text() == locks.uv_lock()
    assert f"{tmp_path / name}: " in capsys.readouterr().out


def test_synapse_lock_defaults_to_every_release_python_and_federate_own_folder():
    args = build_parser().parse_args(["synapse-lock", "1.200.0"])
    assert args.python is None and args.default_pythons == PYTHONS == ["3.11", "3.13"] and args.out is None
