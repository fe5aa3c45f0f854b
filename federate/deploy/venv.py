"""Synapse's virtualenv: facts about it, its install from a lock (locks/) with uv and the repairs
an interrupted install or venv run needs."""

from __future__ import annotations

import shlex

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation

from federate.deploy import locks, paths
from federate.deploy.hostscripts import source
from federate.deploy.locks import LOCKED_INSTALL
from federate.pyinfra_ext.factcache import asks
from federate.pyinfra_ext.owed import owe


# The hash of the venv's file listing when it last passed VenvState's slow checks (root's).
VENV_CHECKED = "/var/lib/federate/venv-checked"
# A venv made beside the packages (venv_made_beside) is made by a background job that holds this
# lock until it ends; every fact about the venv waits for the lock first, so no run (not even the
# next one, after a cut) reads or changes a venv while it is being made.
INSTALL_LOCK = "/run/lock/federate-venv-install"
INSTALL_LOG = "/var/lib/federate/venv-install.log"  # root's, 0600: what the background job printed
INSTALL_STATUS = "/var/lib/federate/venv-install.status"  # its exit status, once it has ended
INSTALL_WAIT = 1800  # seconds a run waits for a background install before it goes on regardless
WAIT_FOR_INSTALL = f"flock -w {INSTALL_WAIT} {INSTALL_LOCK} true 2>/dev/null; "


class VenvState(FactBase):
    """'ok', 'broken' (interpreter or pip unusable: an interrupted creation), 'inconsistent'
    (pip check fails or Synapse does not import: a package missing) or 'absent'.

    The slow checks (pip check and Synapse's import: seconds of CPU, on every run) are skipped
    while the venv's files (names, sizes, times, without __pycache__) and its interpreter are as
    they were when the checks last passed: a fact with a side effect, like the deploy lock's, that
    records their hash in VENV_CHECKED and changes nothing the deploy manages."""

    def command(self, venv: str) -> str:
        v, stamp = shlex.quote(venv), shlex.quote(VENV_CHECKED)
        listing = (f"{{ find {v} -name __pycache__ -prune -o -printf '%P %s %T@\\n' | sort; "
                   f"stat -L -c '%n %s %Y' {v}/bin/python; }} 2>/dev/null | sha1sum | cut -d' ' -f1")
        # the three checks run side by side: Synapse's import alone takes a second
        return (f"{WAIT_FOR_INSTALL}if [ ! -e {v} ]; then echo absent; exit 0; fi; listing=$({listing}); "
                f"if [ \"$(cat {stamp} 2>/dev/null)\" = \"$listing\" ]; then echo ok; exit 0; fi; "
                f"{v}/bin/python -m pip check >/dev/null 2>&1 & check=$!; "
                f"{v}/bin/python -c 'import synapse.app.homeserver' >/dev/null 2>&1 & imports=$!; "
                f"{v}/bin/python -m pip --version >/dev/null 2>&1; pip=$?; "
                "wait $check; check=$?; wait $imports; imports=$?; "
                "if [ $pip != 0 ]; then echo broken; elif [ $check = 0 ] && [ $imports = 0 ]; then "
                f"mkdir -p {shlex.quote(VENV_CHECKED.rsplit('/', 1)[0])} && echo \"$listing\" > {stamp}.new "
                f"&& mv -f {stamp}.new {stamp}; echo ok; else echo inconsistent; fi")

    def process(self, output):
        return "".join(output).strip()


# The venv's site-packages as its interpreter finds them (lib/python3.X of the Python its bin/python
# leads to: after a release upgrade, a newer one that finds nothing there), entered by `cd`; a venv
# whose interpreter is gone has none. Reading the distributions' metadata files there gives what
# importlib.metadata gives, without starting Python (40 to 60 ms of a host's CPU on every run).
ENTER_SITE_PACKAGES = ('py=$(readlink -f {venv}/bin/python) && [ -x "$py" ] '
                       '&& cd {venv}/lib/"${{py##*/}}"/site-packages 2>/dev/null || exit 0; ')
# "name version" of each distribution, from the headers of its METADATA (PKG-INFO for an
# egg-info); "None" for a distribution without a name, as importlib.metadata says
METADATA_AWK = ("awk 'FNR == 1 { name = \"None\" } /^Name:/ { name = $2 } /^Version:/ { print name, $2; nextfile } "
                "/^$/ { nextfile }' *.dist-info/METADATA *.egg-info/PKG-INFO 2>/dev/null")


class DowngradeVerdict(FactBase):
    """Runs the host-side downgrade check: 'ok' or 'refused: <why>'."""

    def command(self, venv: str, version: str, databases: list[str], script: str) -> str:
        args = " ".join(shlex.quote(a) for a in [version, *databases])
        return f"{shlex.quote(venv)}/bin/python -c {shlex.quote(script)} {args}"

    def process(self, output):
        return "".join(output).strip()


class VenvDistributions(FactBase):
    """{canonical name: version} of every distribution in a venv; {} when it has none or its
    interpreter is gone."""

    def command(self, venv: str) -> str:
        return f"{WAIT_FOR_INSTALL}{ENTER_SITE_PACKAGES.format(venv=shlex.quote(venv))}{METADATA_AWK}; true"

    @staticmethod
    def default():
        return {}

    def process(self, output):
        found = {}
        for line in output:
            words = line.split()
            if len(words) == 2 and words[0] != "None":  # a distribution without metadata has no name
                found[canonicalize_name(words[0])] = words[1]
        return found


def installed_synapse(venv: str) -> str | None:
    """The Synapse version installed in a venv, or None: from its metadata, where Synapse's own
    __version__ comes from (importing Synapse takes a second of CPU)."""
    return host.get_fact(VenvDistributions, venv=venv).get("matrix-synapse")


VENV_TOOLS = frozenset({"pip", "setuptools", "wheel"})  # the venv's own; kept unless the lock pins them


def venv_differences(wanted: dict[str, str], installed: dict[str, str],
                     complete: bool) -> tuple[list[str], list[str]]:
    """(wanted packages missing or at another version, installed packages a complete lock lacks).
    Names are canonical (packaging's canonicalize_name); versions compare as versions (1.0 == 1.0.0)."""
    def same(want: str, have: str | None) -> bool:
        try:
            return have is not None and Version(want) == Version(have)
        except InvalidVersion:
            return want == have
    wrong = sorted(name for name, version in wanted.items() if not same(version, installed.get(name)))
    extra = sorted(set(installed) - set(wanted) - VENV_TOOLS) if complete else []
    return wrong, extra


def _venv_work(venv: str, requirements: str, wanted: dict[str, str], locked: bool) -> list[StringCommand]:
    """The commands that bring the venv to `requirements` (none when it is there): a missing or
    broken venv is made anew with Debian's python3; with a lock, exactly its packages, each file
    checked against its hashes, and packages the lock lacks removed; without one, its top-level
    pins. uv runs only when a package is missing or at another version, or when pip check or
    Synapse's import fails (with every version right: all reinstalled)."""
    state = host.get_fact(VenvState, venv=venv)
    installed = host.get_fact(VenvDistributions, venv=venv) if state in ("ok", "inconsistent") else {}
    wrong, extra = venv_differences(wanted, installed, complete=locked)
    if state == "ok" and not wrong and not extra:
        return []
    v = shlex.quote(venv)
    work = []
    if state not in ("ok", "inconsistent"):  # absent, or broken
        work.append(StringCommand(f"rm -rf {v} && python3 -m venv {v}"))
    reinstall = state == "inconsistent" and not wrong and not extra  # files of a package broken
    if locked:
        work.append(uv_install(venv, requirements, *LOCKED_INSTALL.split(), *["--reinstall"] * reinstall))
        if extra:
            work.append(StringCommand(f"{v}/bin/python -m pip --disable-pip-version-check uninstall -y "
                                      + " ".join(extra)))
    else:
        work.append(uv_install(venv, requirements, *["--reinstall"] * reinstall))
    return work


VENV_FACTS = lambda venv, **_: [(VenvState, {"venv": venv}), (VenvDistributions, {"venv": venv})]  # noqa: E731


@asks(VENV_FACTS)
@operation()
def venv_matches(venv: str, requirements: str, wanted: dict[str, str], locked: bool, owes: list[str] = ()):
    """The venv holds the packages of `requirements`, a file on the host (see _venv_work), so a
    converged venv costs two facts. `owes` (the restarts) is written before the venv changes."""
    work = _venv_work(venv, requirements, wanted, locked)
    if work:
        yield from owe(owes)
        yield from work


@asks(VENV_FACTS)
@operation()
def venv_made_beside(venv: str, requirements: str, wanted: dict[str, str], locked: bool, owes: list[str] = ()):
    """A venv that does not exist yet (or no longer runs) is made and filled in a background job,
    so uv's download and bytecode compiling run beside the slow steps that follow (the packages)
    instead of after them; venv_made_waited waits for the job and reports how it ended, and
    venv_matches then finds the venv made. A venv that exists is left to venv_matches: it changes
    only right before the restart that needs it (and after the database dump that precedes a
    version change). The job holds INSTALL_LOCK until it ends, so a cut run's job is waited for."""
    if host.get_fact(VenvState, venv=venv) not in ("absent", "broken"):
        return
    yield from owe(owes)
    work = " && ".join(command.get_raw_value() for command in _venv_work(venv, requirements, wanted, locked))
    job = f"umask 022; {{ {work}; }}; echo $? > {INSTALL_STATUS}"
    lock_dir = shlex.quote(INSTALL_LOG.rsplit("/", 1)[0])
    yield StringCommand(
        f"mkdir -p {lock_dir} && rm -f {INSTALL_STATUS} && (umask 077 && : > {INSTALL_LOG}) && "
        # the job inherits the lock's descriptor: the lock is held until the job ends
        f"{{ flock -w {INSTALL_WAIT} 9 && setsid -f sh -c {shlex.quote(job)} < /dev/null >> {INSTALL_LOG} 2>&1; }} "
        f"9> {INSTALL_LOCK}")


@operation()
def venv_made_waited():
    """Waits for venv_made_beside's job; fails with the end of what it printed (URLs' passwords
    masked) when it failed."""
    status = f"$(cat {INSTALL_STATUS} 2>/dev/null)"
    yield StringCommand(
        f"flock -w {INSTALL_WAIT} {INSTALL_LOCK} true; status={status}; if [ \"$status\" != 0 ]; then "
        f"echo \"making Synapse's venv failed (exit status ${{status:-unknown}}); the end of {INSTALL_LOG}:\" >&2; "
        f"tail -n 40 {INSTALL_LOG} | sed -E 's#(://)[^/@[:space:]]+@#\\1***@#g' >&2; exit 1; fi")


def uv_install(venv: str, requirements: str, *options: str) -> StringCommand:
    """`uv pip install` into the venv (bytecode compiled, as pip does: the venv is read-only to
    Synapse), from the index the host's pip uses; uv itself installed first from its lock when
    missing (hostscripts/uv_install.py). uv's cache lives for this run only: nothing else kept."""
    arguments = [paths.UV, locks.UV_VERSION, locks.uv_lock(), "--", "--python", f"{venv}/bin/python",
                 "--no-config", "--no-cache", "--compile-bytecode", *options, "-r", requirements]
    env = " ".join(f"{name}={value}" for name, value in locks.UV_ENV.items())
    return StringCommand(f"env {env} {shlex.quote(venv)}/bin/python -c {shlex.quote(source('uv_install.py'))} "
                         + " ".join(shlex.quote(a) for a in arguments))


def is_downgrade(wanted: str, installed: str | None) -> bool:
    return installed is not None and Version(wanted) < Version(installed)
