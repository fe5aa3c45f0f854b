"""Facts read together, once per run, instead of one SSH round trip each.

pyinfra 3 keeps no fact cache: every `host.get_fact` runs a command on the host (~85 ms over
SSH), and a converged deploy asks about a hundred of them. Here an operation declares, when the
deploy calls it (while the run is planned), the facts it will ask (`asks`); `facts_read` (an
operation) then reads every declared fact still to come in one command, and `host.get_fact`
answers them from what it read. What was read is forgotten as soon as an operation runs a
command on the host (the next `facts_read` reads the rest anew) and when the deploy lock is
taken, so an operation never decides from a state the run itself (or another run) changed.

A fact nobody declared, or one asked as another user (`_su_user`, `_sudo` on an operation), is
asked over SSH as before; so are facts that act (the deploy lock's `Lease`), which are never
declared.
"""

from __future__ import annotations

import copy
import datetime
import functools
import logging
import re
import shlex
import inspect

from pyinfra import host, logger
from pyinfra.api import FactBase, StringCommand, operation
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments
from pyinfra.api.facts import ShortFactBase
from pyinfra.api.host import Host
from pyinfra.api.state import BaseStateCallback
from pyinfra.facts.server import Users

from federate.pyinfra_ext.batches import BATCHES
from federate.pyinfra_ext.facts import USERS_COMMAND

_known: dict[str, dict] = {}  # host name -> {key: value}: facts read and still true
_wanted: dict[str, list] = {}  # host name -> [(fact class, kwargs)] in the order the deploy declared them
_last_op: dict[str, str] = {}  # host name -> the operation that ran last on it
_MARK = "@@federate-fact"


def _key(target: Host, cls: type, args, kwargs, connector: dict | None = None) -> tuple:
    """A fact as pyinfra runs it: its normalised arguments and the connector arguments (user,
    sudo, ...) it runs with: the asking operation's, with `connector` over them."""
    return cls, _arguments_text(cls, args, kwargs), _connector(target, connector or {})


_texts: dict[tuple, str] = {}  # (class, the arguments as given) -> their normalised text


def _arguments_text(cls: type, args, kwargs) -> str:
    """`_arguments` as text, worked out once for each way a fact is asked (each host asks the
    same few hundred)."""
    given = (cls, repr(args), repr(sorted(kwargs.items())))
    if given not in _texts:
        _texts[given] = repr(sorted(_arguments(cls, args, kwargs).items()))
    return _texts[given]


def _arguments(cls: type, args, kwargs) -> dict:
    """The fact's arguments as pyinfra passes them to its command (defaults filled in)."""
    if not args and not kwargs:
        return {}
    bound = _command_signature(cls).bind(None, *args, **kwargs)  # None stands for the fact instance
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    del arguments[next(iter(arguments))]
    return arguments


@functools.cache
def _command_signature(cls: type) -> inspect.Signature:
    """Worked out once per fact class: every fact asked needs it, and inspect takes 0.1 ms each time."""
    return inspect.signature(cls.command)


_defaults: dict[str, dict] = {}  # host name -> the global arguments of an operation that sets none
_connectors: dict[tuple, tuple] = {}  # (id of the arguments, overrides) -> (the arguments, their text)


def _connector(target: Host, overrides: dict) -> str:
    """As pyinfra's own fact reading does: the current operation's arguments, else the host's
    defaults (worked out once per host: pyinfra takes milliseconds for it). The text is worked out
    once per operation and host: the operation's arguments do not change once it is planned."""
    base = target.current_op_global_arguments
    if base is None:
        if target.name not in _defaults:
            _defaults[target.name] = pop_global_arguments(target.state, target, {})[0]
        base = _defaults[target.name]
    memo = (id(base), repr(sorted(overrides.items())))
    if memo not in _connectors or _connectors[memo][0] is not base:  # kept alive by the memo: no id reused
        merged = {name: base.get(name) for name in CONNECTOR_ARGUMENT_KEYS}
        merged.update((name, value) for name, value in overrides.items() if name in CONNECTOR_ARGUMENT_KEYS)
        _connectors[memo] = base, repr(sorted(merged.items()))
    return _connectors[memo][1]


def _cacheable(cls, args, kwargs) -> bool:
    if not _cacheable_class(cls):
        return False
    for name in kwargs:
        if name.startswith("_"):
            return False
    return True


@functools.cache
def _cacheable_class(cls) -> bool:
    return isinstance(cls, type) and issubclass(cls, FactBase) and not issubclass(cls, ShortFactBase)


_pyinfra_get_fact = Host.get_fact


@functools.wraps(_pyinfra_get_fact)
def _get_fact(self: Host, cls, *args, **kwargs):
    known = _known.get(self.name)
    if known and _cacheable(cls, args, kwargs):
        key = _key(self, cls, args, kwargs)
        if key in known:
            if logger.isEnabledFor(logging.DEBUG):  # the host's prefix alone takes click a while to style
                logger.debug(f"{self.print_prefix}Fact read earlier in this run: {cls.__name__} ({key[1]})")
            return _copy(known[key])  # pyinfra's operations may change what they are given
    return _pyinfra_get_fact(self, cls, *args, **kwargs)


_IMMUTABLE = frozenset({str, int, bool, float, bytes, datetime.datetime, datetime.date})


def _copy(value):
    """A deep copy of a fact's value; its usual shapes (dicts, lists, sets, tuples, strings,
    numbers, times) copied directly: copy.deepcopy's bookkeeping costs a millisecond for the
    package list, and a file's times went through its slowest path."""
    kind = type(value)
    if value is None or kind in _IMMUTABLE:
        return value
    if kind is dict:
        return {key: _copy(item) for key, item in value.items()}  # keys: strings, numbers, tuples
    if kind is list:
        return [_copy(item) for item in value]
    if kind is tuple:
        return tuple(_copy(item) for item in value)
    if kind is set:
        return {_copy(item) for item in value}  # items hashable: immutable
    return copy.deepcopy(value)


# pyinfra offers no hook for this: Host.get_fact is the one place every operation asks a fact.
Host.get_fact = _get_fact


class _ForgetOnChange(BaseStateCallback):
    """An operation that ran a command may have changed anything a fact says: forget them all."""

    @staticmethod
    def operation_host_start(state, host, op_hash):
        if op_hash not in state.ops[host]:  # pyinfra starts every operation on every host, then skips
            return
        previous = _last_op.get(host.name)
        _last_op[host.name] = op_hash
        if previous and state.get_op_data_for_host(host, previous).operation_meta.executed:
            _known.pop(host.name, None)


def _watch_changes(state) -> None:
    if not any(isinstance(h, _ForgetOnChange) for h in state.callback_handlers):
        state.add_callback_handler(_ForgetOnChange())


def forget() -> None:
    """Forget what was read on this host (it changed, or another run may have changed it)."""
    _known.pop(host.name, None)


def asks(facts_of):
    """Decorates an operation: `facts_of(**kwargs)` (the operation's keyword arguments) lists the
    (fact class, kwargs) it will ask; they are declared when the operation is called, asked as the
    user the operation runs as (its `_su_user`, `_sudo`, ...)."""
    def decorate(op):
        @functools.wraps(op)
        def declaring(*args, **kwargs):
            connector = {k: v for k, v in kwargs.items() if k in CONNECTOR_ARGUMENT_KEYS}
            own = {k: v for k, v in kwargs.items() if not k.startswith("_") and k != "name"}
            wants([(cls, fact_kwargs, connector) for cls, fact_kwargs in facts_of(**own)])
            return op(*args, **kwargs)
        return declaring
    return decorate


def wants(facts) -> None:
    """Declare facts the deploy will ask on this host (read by the next `facts_read`)."""
    _wanted.setdefault(host.name, []).extend(facts)


class Together(FactBase):
    """Several facts' commands in one shell, run side by side (they only read): each one's output
    lines and exit status, in order."""

    def command(self, commands: list[str]) -> str:
        # a newline before each closing parenthesis: a command may end in a comment. Each mark is
        # a file of its own, so one `cat` prints every output and mark (a process per fact, on a
        # host that runs fifty facts, costs more host CPU than the facts themselves).
        started = [f"{{ ( {command}\n) >\"$d/{i}\" 2>/dev/null </dev/null; echo \"{_MARK} {i} $?\" >\"$d/{i}.s\"; }} &"
                   for i, command in enumerate(commands)]
        shown = " ".join(f'"$d/{i}" "$d/{i}.s"' for i in range(len(commands)))
        return "\n".join(['d=$(mktemp -d) || exit 1', "trap 'rm -rf \"$d\"' EXIT", *started, "wait",
                          f"cat {shown}" if commands else "", "true"])

    @staticmethod
    def default():
        return []

    def process(self, output):
        results, lines = [], []
        for line in output:
            # an output without a final newline ends on the line its mark starts
            match = re.fullmatch(rf"(.*?){_MARK} (\d+) (\d+)", line.rstrip("\r\n"))
            if match:
                if match.group(1):
                    lines.append(match.group(1))
                results.append((lines, int(match.group(3))))
                lines = []
            else:
                lines.append(line)
        return results


# pyinfra facts whose command has a cheaper one printing the same output (see facts.USERS_COMMAND)
_CHEAPER = {Users: USERS_COMMAND}


def _command_of(fact: FactBase, kwargs: dict) -> str:
    command = _CHEAPER.get(type(fact)) or (fact.command(**kwargs) if callable(fact.command) else fact.command)
    command = command.get_raw_value() if isinstance(command, StringCommand) else str(command)
    needs = fact.requires_command(**kwargs) if callable(fact.requires_command) else fact.requires_command
    if needs:  # absent: a failed status, so pyinfra's own get_fact answers it (with its default)
        command = f"command -v {shlex.quote(str(needs))} >/dev/null 2>&1 || exit 97; {command}"
    return command


def read_together(facts) -> None:
    """Read `facts` not known yet, one command per user they are asked as, and keep their values.
    Each is (class, kwargs) or (class, kwargs, connector arguments such as {"_su_user": ...}). A fact
    whose command fails is not kept: asked alone, it fails the way pyinfra says it does."""
    known = _known.setdefault(host.name, {})
    todo: dict[str, dict] = {}  # connector arguments -> {key: (fact, kwargs)}
    for cls, kwargs, *connector in facts:
        connector = connector[0] if connector else {}
        if _cacheable(cls, (), kwargs) and getattr(cls(), "shell_executable", None) is None:
            key = _key(host, cls, (), kwargs, connector)
            group = todo.setdefault(repr(sorted(connector.items())), {"connector": connector, "facts": {}})
            if key not in known:
                # one instance: some facts keep what their command was given for their process (a path)
                group["facts"].setdefault(key, (cls(), _arguments(cls, (), kwargs)))
    for group in todo.values():
        if group["facts"]:
            _read_group(known, group["facts"], group["connector"])


def _batch_of(fact: FactBase, kwargs: dict):
    for batch in BATCHES:
        part = batch.part(type(fact), kwargs)
        if part is not None:
            return batch, part
    return None, None


def _read_group(known: dict, facts: dict, connector: dict) -> None:
    _watch_changes(host.state)
    alone, batched = {}, {}  # key -> (fact, kwargs); batch -> {key: (fact, part)}
    for key, (fact, kwargs) in facts.items():
        batch, part = _batch_of(fact, kwargs)
        if batch is None:
            alone[key] = (fact, kwargs)
        else:
            batch.prime(fact, part)
            batched.setdefault(batch, {})[key] = (fact, part)
    parts = {batch: list(dict.fromkeys(part for _, part in members.values())) for batch, members in batched.items()}
    commands = [_command_of(fact, kw) for fact, kw in alone.values()]
    commands += [batch.command(parts[batch]) for batch in batched]
    answers = host.get_fact(Together, commands=commands, **connector)
    for (key, (fact, _)), (lines, status) in zip(alone.items(), answers):
        if status == 0:
            _keep(known, key, fact, lines)
    for (batch, members), (lines, status) in zip(batched.items(), answers[len(alone):]):
        pieces = batch.split(lines, parts[batch]) if status == 0 else None
        if pieces is not None:  # else each is asked alone, the way pyinfra asks it
            for key, (fact, part) in members.items():
                _keep(known, key, fact, pieces[part])


def _keep(known: dict, key: tuple, fact: FactBase, lines: list[str]) -> None:
    try:
        known[key] = fact.process(lines) if lines else fact.default()
    except Exception:  # noqa: BLE001 - asked alone, pyinfra reports what is wrong with it
        pass


@operation()
def facts_read(start: int = 0):
    """Every fact the deploy declared from position `start` on that is not known: one round trip.
    Changes nothing."""
    read_together(_wanted.get(host.name, [])[start:])
    host.noop("facts read in one command")
    yield from ()  # an operation is a generator, even with nothing to run


def facts_read_here(name: str) -> None:
    """A `facts_read` for the facts of the operations the deploy calls after this point."""
    facts_read(name=name, start=len(_wanted.get(host.name, [])))
