"""Two controller costs of planning that grow with every host, each operation call paying them.

- Operation order: pyinfra orders operations by the line numbers of the calls that made them. To
  find them it takes `inspect.stack()` and `inspect.getframeinfo` of each frame, which look up every
  frame's module and read a line of its source: about 7 ms per operation call here. Only file
  names and line numbers are used, and a frame holds both, so pyinfra is given them directly.
- Global arguments: pyinfra works out the types of its global arguments (`_sudo`, `_if`, ...)
  with `typing.get_type_hints` for every operation call, evaluating the same annotations each
  time (about 2 ms); they never change, so they are worked out once.

- The host's data for global arguments: for each operation call pyinfra looks each of its thirty
  global arguments up in the host's data, and each lookup merges the host's group data anew
  (about 0.2 ms per operation call). Here each host's values are looked up once and kept while the
  things they come from are the same: the current @deploy's data and the data assigned in the run
  (`host.data.x = ...`). The inventory's host, group and global data are taken as fixed during a
  run, as pyinfra's docs describe them.

A hundred operations per host make these seconds of controller CPU at ten hosts (pyinfra 3.10,
`pyinfra.api.util` and `pyinfra.api.arguments`).
"""

from __future__ import annotations

import functools
import sys
from copy import copy
from types import SimpleNamespace
from typing import NamedTuple

import pyinfra.api.arguments
import pyinfra.api.deploy
import pyinfra.api.facts
import pyinfra.api.operation
import pyinfra.api.util
from pyinfra.context import ContextObject


class FrameInfo(NamedTuple):
    filename: str
    lineno: int


def stack() -> list[tuple]:
    """inspect.stack() without source: (frame,) items, innermost (the caller's frame) first."""
    frames, frame = [], sys._getframe(1)
    while frame is not None:
        frames.append((frame,))
        frame = frame.f_back
    return frames


def getframeinfo(frame) -> FrameInfo:
    return FrameInfo(frame.f_code.co_filename, frame.f_lineno)


_all_global_arguments = functools.cache(pyinfra.api.arguments.all_global_arguments)


def all_global_arguments() -> list[tuple[str, type]]:
    return list(_all_global_arguments())  # a fresh list, as pyinfra's own gives


_pyinfra_pop_global_arguments = pyinfra.api.arguments.pop_global_arguments
_MISSING = object()


def _argument_values(data, names) -> dict:
    """The global arguments a host's data sets, looked up once."""
    found = {}
    for name in names:
        value = getattr(data, name, _MISSING)
        if value is not _MISSING:
            found[name] = value
    return found


class _HostWithArgumentData:
    """The host, with `data` holding only the global arguments its data sets, each a shallow copy
    as HostData gives it (a plain namespace: asking it for one it lacks raises no exception)."""

    def __init__(self, host, found: dict):
        self._host, self.data = host, SimpleNamespace(**{name: copy(value) for name, value in found.items()})

    def __getattr__(self, name):
        return getattr(self._host, name)


_argument_data: dict = {}  # host -> (what its values come from, the values)


@functools.cache
def _global_argument_names() -> tuple[str, ...]:
    return tuple(name for name, _ in _all_global_arguments())


def pop_global_arguments(state, host, kwargs):
    if isinstance(host, ContextObject):  # pyinfra passes its context's host: one object for every host
        host = host._get_module()
    names = _global_argument_names()
    assigned = host.data.__dict__["override_datas"]
    sources = (host.current_op_deploy_data, host.current_deploy_data,
               tuple((name, assigned[name]) for name in names if name in assigned))
    kept = _argument_data.get(host)
    # the same deploy data (the same objects) and the same values assigned
    if kept is None or kept[0][0] is not sources[0] or kept[0][1] is not sources[1] or kept[0][2] != sources[2]:
        kept = sources, _argument_values(host.data, names)
        _argument_data[host] = kept
    return _pyinfra_pop_global_arguments(state, _HostWithArgumentData(host, kept[1]), kwargs)


def install() -> None:
    pyinfra.api.util.stack = stack
    pyinfra.api.util.getframeinfo = getframeinfo
    pyinfra.api.arguments.all_global_arguments = all_global_arguments
    pyinfra.api.facts.all_global_arguments = all_global_arguments
    for module in ("pyinfra.api.operation", "pyinfra.api.facts", "pyinfra.api.deploy"):
        sys.modules[module].pop_global_arguments = pop_global_arguments
