"""Synapse's virtualenv: facts about it and the repairs an interrupted pip or venv run needs."""

from __future__ import annotations

import shlex

from packaging.version import Version
from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation

from federate.pyinfra_ext.owed import owe


class VenvBroken(FactBase):
    """True when the venv exists but its interpreter or pip does not run (an interrupted creation)."""

    def command(self, venv: str) -> str:
        v = shlex.quote(venv)
        return f"[ -e {v} ] && ! {v}/bin/python -m pip --version >/dev/null 2>&1 && echo yes || echo no"

    def process(self, output):
        return "".join(output).strip() == "yes"


class VenvState(FactBase):
    """'ok', 'broken' (interpreter or pip unusable: an interrupted creation), 'inconsistent'
    (pip check fails or Synapse does not import: a package missing) or 'absent'."""

    def command(self, venv: str) -> str:
        v = shlex.quote(venv)
        return (f"if [ ! -e {v} ]; then echo absent; "
                f"elif ! {v}/bin/python -m pip --version >/dev/null 2>&1; then echo broken; "
                f"elif {v}/bin/python -m pip check >/dev/null 2>&1 && "
                f"{v}/bin/python -c 'import synapse.app.homeserver' >/dev/null 2>&1; then echo ok; "
                f"else echo inconsistent; fi")

    def process(self, output):
        return "".join(output).strip()


class InstalledSynapse(FactBase):
    """The Synapse version installed in a venv, or None."""

    def command(self, venv: str) -> str:
        return (f"{shlex.quote(venv)}/bin/python -c 'import synapse; print(synapse.__version__)'"
                " 2>/dev/null || echo none")

    def process(self, output):
        value = "".join(output).strip()
        return None if value == "none" else value


class DowngradeVerdict(FactBase):
    """Runs the host-side downgrade check: 'ok' or 'refused: <why>'."""

    def command(self, venv: str, version: str, databases: list[str], script: str) -> str:
        args = " ".join(shlex.quote(a) for a in [version, *databases])
        return f"{shlex.quote(venv)}/bin/python -c {shlex.quote(script)} {args}"

    def process(self, output):
        return "".join(output).strip()


@operation()
def venv_usable(venv: str):
    """A venv whose interpreter or pip does not run is removed, so it is created again.
    (A cheap fact: the slow pip check and import of VenvState are left to venv_consistent.)"""
    if host.get_fact(VenvBroken, venv=venv):
        yield StringCommand(f"rm -rf {shlex.quote(venv)}")


@operation()
def venv_consistent(venv: str, requirement: str, owes: list[str] = ()):
    """Reinstall when a package of the venv went missing or broken (pip check, import)."""
    if host.get_fact(VenvState, venv=venv) == "inconsistent":
        yield from owe(owes)
        pip = f"{shlex.quote(venv)}/bin/python -m pip"
        yield StringCommand(f"{pip} install --force-reinstall --no-deps {shlex.quote(requirement)}"
                            f" && {pip} install {shlex.quote(requirement)}")


@operation()
def owed_before_install(venv: str, version: str, owes: list[str]):
    """Before the venv changes version, note the restarts that change will owe."""
    if host.get_fact(InstalledSynapse, venv=venv) not in (None, version):
        yield from owe(owes)


def is_downgrade(wanted: str, installed: str | None) -> bool:
    return installed is not None and Version(wanted) < Version(installed)
