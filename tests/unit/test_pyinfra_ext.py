"""federate.pyinfra_ext, tested the way pyinfra tests its own operations: facts in, commands out.

Each operation's generator runs against a fake host that answers facts from a table, so these
run in milliseconds; the lab suites run the same operations on real hosts.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from io import StringIO

import pytest
from pyinfra.api import FileUploadCommand, StringCommand
from pyinfra.api.util import get_file_sha1
from pyinfra.context import ctx_host
from pyinfra.facts.files import File, Sha1File

from federate.pyinfra_ext import apt, files, owed
from federate.pyinfra_ext.facts import PathExists
from federate.pyinfra_ext.lease import Lease, lease_script
from federate.pyinfra_ext.run import RUN_ID


class FakeHost:
    """Answers get_fact from `facts`: {(FactClass, frozenset(kwargs.items())): value}."""

    name = "fake"

    def __init__(self, facts: dict):
        self.facts, self.noops, self.asked = facts, [], []

    def get_fact(self, fact, **kwargs):
        self.asked.append((fact, kwargs))
        return self.facts.get((fact, frozenset(kwargs.items())))

    def noop(self, message):
        self.noops.append(message)


def fact(cls, value, **kwargs):
    return {(cls, frozenset(kwargs.items())): value}


def commands(operation, facts: dict, **kwargs) -> list:
    """The commands `operation` yields for a host with these facts: shell text, or ('upload', dest, data)."""
    with ctx_host.use(FakeHost(facts)):
        out = []
        for command in operation._inner(**kwargs):
            if isinstance(command, FileUploadCommand):
                src = command.src
                data = src.getvalue() if isinstance(src, StringIO) else open(src).read()
                out.append(("upload", command.dest, data))
            else:
                assert isinstance(command, StringCommand)
                out.append(command.get_raw_value())
        return out


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


# --- config_file --------------------------------------------------------------------------------

def test_config_file_unchanged_yields_nothing():
    assert commands(files.config_file, fact(Sha1File, sha1("a = 1\n"), path="/etc/x.conf"),
                    dest="/etc/x.conf", content="a = 1\n") == []


def test_config_file_is_written_private_checked_then_renamed():
    out = commands(files.config_file, {}, dest="/etc/x.conf", content="a = 2\n", user="svc", group="svc",
                   mode="600", check="check-it {path}", owes="/var/lib/federate/pending/restart-x")
    new = f"/etc/x.conf.federate-new-{RUN_ID}"  # unique per run: two runs never share a temporary file
    assert out == [
        f"mkdir -p /etc && find /etc -maxdepth 1 -name 'x.conf.federate-*' ! -name '*-{RUN_ID}' -delete",
        f"(umask 077 && touch {new})",
        ("upload", new, "a = 2\n"),
        f"chown svc:svc {new} && chmod 600 {new}",
        f"check-it {new} || {{ rm -f {new}; exit 1; }}",
        "mkdir -p /var/lib/federate/pending && touch /var/lib/federate/pending/restart-x",
        f"mv -f {new} /etc/x.conf",
    ]


def test_config_file_checked_in_place_rolls_back():
    out = commands(files.config_file, {}, dest="/etc/nginx/conf.d/a.conf", content="x", check="nginx -t -q",
                   check_in_place=True)
    last = out[-1]
    assert last.startswith("{ [ ! -e /etc/nginx/conf.d/a.conf ] || cp -a")
    assert f"nginx -t -q || {{ if [ -e /etc/nginx/conf.d/a.conf.federate-old-{RUN_ID} ]; then mv -f" in last


# --- private_file -------------------------------------------------------------------------------

def test_private_file_upload_has_its_final_mode_before_the_content_arrives(tmp_path):
    key = tmp_path / "key.pem"
    key.write_text("PRIVATE\n")
    out = commands(files.private_file, {}, src=str(key), dest="/etc/tls/a/privkey.pem", group="caddy", mode="640")
    new = f"/etc/tls/a/privkey.pem.federate-new-{RUN_ID}"
    touch = out.index(f"(umask 077 && touch {new})")
    upload = next(i for i, c in enumerate(out) if isinstance(c, tuple))
    assert touch < upload and out[upload][2] == "PRIVATE\n"
    assert f"chown root:caddy {new} && chmod 640 {new}" in out
    # the same content is not uploaded again
    assert commands(files.private_file, fact(Sha1File, get_file_sha1(str(key)), path="/etc/tls/a/privkey.pem"),
                    src=str(key), dest="/etc/tls/a/privkey.pem") == []


# --- file_attributes, generated_once ------------------------------------------------------------

@pytest.mark.parametrize("current, expected", [
    ({"user": "svc", "group": "svc", "mode": 600}, []),
    ({"user": "root", "group": "svc", "mode": 600}, ["chown svc:svc /k"]),
    ({"user": "svc", "group": "svc", "mode": 644}, ["chmod 600 /k"]),
    (None, []),  # nothing is created
])
def test_file_attributes(current, expected):
    assert commands(files.file_attributes, fact(File, current, path="/k"), path="/k", user="svc", group="svc",
                    mode="600") == expected


def test_generated_once_never_replaces():
    assert commands(files.generated_once, fact(File, {"mode": 600}, path="/k"), path="/k", command="gen",
                    user="svc") == []
    [command] = commands(files.generated_once, {}, path="/k", command="gen > $OUT", user="svc")
    tmp = f"/k.federate-new-{RUN_ID}"
    assert command == (f"umask 077 && export OUT={tmp} && gen > $OUT && chown svc:svc {tmp} && chmod 600 {tmp}"
                       f" && {{ ln {tmp} /k 2>/dev/null || [ -e /k ]; }}; status=$?; rm -f {tmp}; exit $status")


# --- owed restarts and reloads ------------------------------------------------------------------

def test_settled_removes_only_an_existing_marker():
    marker = owed.pending_marker("reload-nginx")
    assert commands(owed.settled, fact(PathExists, True, path=marker), marker=marker) == [f"rm -f {marker}"]
    assert commands(owed.settled, fact(PathExists, False, path=marker), marker=marker) == []


def test_owed_before_uploads_only_when_a_file_changes(tmp_path):
    local = tmp_path / "cert.pem"
    local.write_text("CERT\n")
    marker = owed.pending_marker("reload-caddy")
    same = fact(Sha1File, get_file_sha1(str(local)), path="/etc/c.pem")
    assert commands(owed.owed_before_uploads, same, uploads=[(str(local), "/etc/c.pem")], marker=marker) == []
    assert commands(owed.owed_before_uploads, {}, uploads=[(str(local), "/etc/c.pem")], marker=marker) == [
        f"mkdir -p {owed.PENDING_DIR} && touch {marker}"]


def test_changed_or_owed_condition():
    class Op:
        def __init__(self, changed):
            self.changed = changed

        def did_change(self):
            return self.changed

    marker = owed.pending_marker("restart-x")
    with ctx_host.use(FakeHost(fact(PathExists, False, path=marker))):
        assert owed.changed_or_owed([Op(False), Op(True)], marker)() is True
        assert owed.changed_or_owed([Op(False)], marker)() is False
    with ctx_host.use(FakeHost(fact(PathExists, True, path=marker))):
        assert owed.changed_or_owed([Op(False)], marker)() is True


# --- apt --------------------------------------------------------------------------------------

def test_dpkg_consistent():
    assert commands(apt.dpkg_consistent, fact(apt.DpkgInterrupted, False)) == []
    [command] = commands(apt.dpkg_consistent, fact(apt.DpkgInterrupted, True))
    assert "dpkg --configure -a" in command


def test_facts_parse_their_output():
    assert PathExists().process(["yes"]) is True and PathExists().process(["no"]) is False
    assert apt.DpkgInterrupted().process(["yes\n"]) is True


# --- the deploy lock's script, run here for real (sh, flock and date, as on a Debian host) ------

def lease(tmp_path, action: str, run: str, lease_seconds: int = 60, wait: int = 0) -> list[str]:
    script = lease_script(action, lease_seconds, wait, lock=str(tmp_path / "deploy.lock"), run=run,
                          holder=f"{run} on the controller")
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return Lease().process(result.stdout.splitlines())


def test_one_run_holds_the_lock_the_other_is_told_who(tmp_path):
    assert lease(tmp_path, "acquire", "run-a") == ["acquired"]
    held = lease(tmp_path, "acquire", "run-b")
    assert held[0] == "held" and held[1] == "run-a on the controller" and held[2].endswith("UTC")
    assert lease(tmp_path, "refresh", "run-a") == ["refreshed"]
    assert lease(tmp_path, "refresh", "run-b") == ["lost", "run-a on the controller"]
    assert lease(tmp_path, "release", "run-b") == ["released"]  # not its lock: kept
    assert lease(tmp_path, "acquire", "run-b")[0] == "held"
    assert lease(tmp_path, "release", "run-a") == ["released"]
    assert not (tmp_path / "deploy.lock").exists()
    assert lease(tmp_path, "acquire", "run-b") == ["acquired"]


def test_an_expired_lease_is_taken_over_and_a_waiting_run_gets_it(tmp_path):
    assert lease(tmp_path, "acquire", "cut-run", lease_seconds=1) == ["acquired"]
    start = time.monotonic()
    assert lease(tmp_path, "acquire", "next-run", wait=5) == ["took-over", "cut-run on the controller"]
    assert time.monotonic() - start < 4
