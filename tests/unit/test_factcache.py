"""Facts read together (federate.pyinfra_ext.factcache), on this machine through pyinfra's local connector,
and planning's shortcuts (planning)."""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import subprocess

import pytest
from pyinfra import host
from pyinfra.api import Config, FactBase, Inventory, State, operation
from pyinfra.api.connect import connect_all
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.context import ctx_host, ctx_state
from pyinfra.facts.files import File, FindFiles, Sha1File
from pyinfra.facts.systemd import SystemdStatus
from pyinfra.operations import server

from federate.pyinfra_ext import factcache, planning
from federate.pyinfra_ext.factcache import Together, read_together


def test_together_keeps_each_commands_lines_and_status():
    commands = ["echo a; echo b", "printf 'no newline'", "false", "true # a comment", "exit 3", "echo",
                "printf 'x\\n\\n'"]
    script = Together().command(commands)
    output = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert Together().process(output.splitlines()) == [
        (["a", "b"], 0), (["no newline"], 0), ([], 1), ([], 0), ([], 3), ([""], 0), (["x", ""], 0)]
    assert Together().process(subprocess.run(["sh", "-c", Together().command([])], capture_output=True,
                                             text=True, check=True).stdout.splitlines()) == []


@pytest.fixture
def local():
    """A pyinfra state with this machine as its one host, as `pyinfra @local -y` makes it."""
    inventory = Inventory((["@local"], {}))
    state = State(inventory, Config(), check_for_changes=False)
    connect_all(state)
    local_host = inventory.get_host("@local")
    with ctx_state.use(state), ctx_host.use(local_host):
        yield state
    factcache._known.clear()
    factcache._wanted.clear()
    factcache._last_op.clear()
    factcache._defaults.clear()
    factcache._connectors.clear()


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def test_a_fact_read_together_is_answered_until_an_operation_changes_the_host(local, tmp_path):
    path = tmp_path / "f"
    path.write_text("one\n")
    seen = []

    @operation()
    def look():
        seen.append(host.get_fact(Sha1File, path=str(path)))
        yield from ()

    read_together([(Sha1File, {"path": str(path)}), (File, {"path": str(tmp_path / "missing")})])
    path.write_text("two\n")  # behind pyinfra's back: the value read before is still given
    assert host.get_fact(File, path=str(tmp_path / "missing")) is None
    add_op(local, look)
    add_op(local, server.shell, commands=[f"echo three > {path}"])
    add_op(local, look)
    run_ops(local)
    # the first look was answered from what was read together; the shell changed the host, so
    # the second asked again
    assert seen == [sha1("one\n"), sha1("three\n")]


def test_facts_that_fail_are_left_to_pyinfra(local, tmp_path):
    class Fails(FactBase):
        def command(self, path):
            return "exit 2"

    read_together([(Fails, {"path": str(tmp_path)}), (Sha1File, {"path": str(tmp_path / "none")})])
    known = factcache._known[host.name]
    assert [key[0] for key in known] == [Sha1File]


def test_operation_order_sees_the_frames_inspect_sees():
    def frames(take, info):
        return [(f.filename, f.lineno) for f in (info(item[0]) for item in take())]

    def both():
        return frames(inspect.stack, inspect.getframeinfo), frames(planning.stack, planning.getframeinfo)

    theirs, ours = both()
    assert ours == theirs


def test_global_arguments_are_worked_out_once_and_the_same():
    from pyinfra.api.arguments import AllArguments
    from typing import get_type_hints

    assert planning.all_global_arguments() == list(get_type_hints(AllArguments).items())
    assert planning.all_global_arguments() is not planning.all_global_arguments()  # callers may change theirs


# Users with supplementary groups, one without a password hash, whatever the machine has (a fresh
# Debian controller has no user in a supplementary group).
ACCOUNTS = {
    "passwd": "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n"
              "bob:x:1001:1001::/home/bob:/usr/sbin/nologin\n",
    "group": "root:x:0:\naudio:x:29:bob\nstaff:x:50:alice,bob\nalice:x:1000:\nbob:x:1001:\n",
    "shadow": "root:*:19000:0:99999:7:::\nalice:$y$j9T$x:19000:0:99999:7:::\n",
}


def test_users_read_together_are_what_pyinfras_own_fact_says(local, tmp_path):
    """The cheaper Users command prints pyinfra's lines, byte for byte, on this machine's users and
    groups (supplementary groups, users without a password hash, system users)."""
    from pyinfra.facts.server import Users

    from federate.pyinfra_ext.facts import USERS_COMMAND

    def run(command, etc=None):
        if etc:  # the known users below in place of this machine's, in a mount namespace of its own
            command = "".join(f"mount --bind {etc}/{name} /etc/{name} && " for name in ACCOUNTS) + command
            return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
                                  capture_output=True, text=True, check=True).stdout
        return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout

    assert run(USERS_COMMAND) == run(Users().command())  # this machine's users and groups
    if os.geteuid() == 0 and shutil.which("unshare"):
        for name, text in ACCOUNTS.items():
            (tmp_path / name).write_text(text)
        ours = run(USERS_COMMAND, tmp_path)
        assert ours == run(Users().command(), tmp_path)
        fields = {line.split(":")[0]: line.split("|")[1:] for line in ours.splitlines()}
        assert fields["bob"][:2] == ["bob", "bob audio staff"] and fields["bob"][3] == ""  # no password hash
        assert fields["alice"][:2] == ["alice", "alice staff"] and fields["alice"][3] == "$y$j9T$x"
    read_together([(Users, {})])
    cached = host.get_fact(Users)
    factcache._known.clear()
    assert cached == host.get_fact(Users) and cached


@pytest.mark.parametrize("cls, args, kwargs", [
    (Sha1File, (), {"path": "/etc/hosts"}), (Sha1File, ("/etc/hosts",), {}),
    (FindFiles, (), {"path": "/etc", "fname": "*.conf"}),
    (SystemdStatus, (), {"services": ["nginx.service"], "user_mode": False}),
])
def test_fact_arguments_are_what_inspect_gives(cls, args, kwargs):
    expected = inspect.getcallargs(cls().command, *args, **kwargs)
    expected.pop("self")
    assert factcache._arguments(cls, args, kwargs) == expected
    with pytest.raises(TypeError):
        factcache._arguments(cls, (), {"no_such_argument": 1})



def test_a_fact_value_given_is_a_copy_of_what_was_read():
    read = {"nginx": ["1.22"], "list": [{"a": {1, 2}}, ("t", [1])], "n": None, "s": "x", 3: 1.5}
    given = factcache._copy(read)
    assert given == read
    given["nginx"].append("9"), given["list"][0]["a"].add(3), given["list"][1][1].append(2)
    assert read == {"nginx": ["1.22"], "list": [{"a": {1, 2}}, ("t", [1])], "n": None, "s": "x", 3: 1.5}


def test_a_fact_asked_the_same_way_gets_the_same_key_with_its_defaults(local):
    first = factcache._key(host, FindFiles, (), {"path": "/etc", "fname": "*.conf"})
    assert factcache._key(host, FindFiles, ("/etc",), {"fname": "*.conf"}) == first
    assert factcache._key(host, FindFiles, (), {"path": "/etc", "fname": "*.conf"}) == first  # from the memo
    assert factcache._key(host, FindFiles, (), {"path": "/etc", "fname": "*.conf"}, {"_su_user": "postgres"}) != first


def test_paths_read_together_are_what_pyinfras_own_facts_say(local, tmp_path):
    """One `stat` and one `sha1sum` for every path give each File, Directory, Link and Sha1File what
    its own command gives: files, directories, links (dangling too), missing paths, odd names."""
    from pyinfra.facts.files import Directory, Link

    (tmp_path / "file").write_text("one\n")
    (tmp_path / "with space 'quoted'").write_text("two\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "file")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    paths = [str(tmp_path / name) for name in ("file", "with space 'quoted'", "dir", "link", "dangling", "missing")]
    asked = [(cls, {"path": path}) for path in paths for cls in (File, Directory, Link, Sha1File)]
    read_together(asked)
    assert len(factcache._known[host.name]) == len(asked)
    together = [host.get_fact(cls, **kwargs) for cls, kwargs in asked]
    factcache._known.clear()
    alone = [host.get_fact(cls, **kwargs) for cls, kwargs in asked]

    def without_atime(values):  # sha1sum's read (beside the stat, or after it) may set a file's atime
        return [{k: v for k, v in value.items() if k != "atime"} if isinstance(value, dict) else value
                for value in values]
    assert without_atime(together) == without_atime(alone)
    assert together[0]["size"] == 4 and together[3] == sha1("one\n") and together[14]["link_target"] == paths[0]
    assert together[20:] == [None] * 4


def test_global_arguments_from_the_host_data_are_pyinfras():
    """The host data's global arguments, looked up once per host, are what pyinfra's lookup gives
    for each host (asked as pyinfra asks, through its context's host): from the host's and its
    groups' data, a @deploy's data defaults, and data assigned in the run."""
    from pyinfra import host as context_host
    from pyinfra.api.arguments import pop_global_arguments as pyinfras

    inventory = Inventory((["one", ("two", {"_sudo_user": "bob"})], {"_sudo": False, "_env": {"A": "1"}}),
                          admins=(["one"], {"_sudo_user": "admin", "_shell_executable": "bash"}))
    state = State(inventory, Config())
    one, two = inventory.get_host("one"), inventory.get_host("two")

    def both(kwargs):
        ours = planning.pop_global_arguments(state, context_host, dict(kwargs))
        assert ours == pyinfras(state, context_host, dict(kwargs))
        return ours[0]

    with ctx_state.use(state):
        with ctx_host.use(one):
            first = both({"_chdir": "/tmp"})
            assert (first["_sudo_user"], first["_shell_executable"], first["_env"], first["_chdir"]) == (
                "admin", "bash", {"A": "1"}, "/tmp")
            first["_env"]["B"] = "2"  # a caller's change to what it was given stays its own
            assert both({})["_env"] == {"A": "1"}
        with ctx_host.use(two):
            assert both({})["_sudo_user"] == "bob"
        with ctx_host.use(one):
            assert both({})["_sudo_user"] == "admin"
            one.current_deploy_data = {"_timeout": 7}  # as a @deploy with data defaults sets it
            assert both({})["_timeout"] == 7
            one.current_deploy_data = None
            assert both({})["_timeout"] is None
            one.data._sudo_user = "other"
            assert both({})["_sudo_user"] == "other"
