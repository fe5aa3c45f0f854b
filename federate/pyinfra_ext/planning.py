"""Two controller costs of planning that grow with every host, each operation call paying them.

- Operation order: pyinfra orders operations by the line numbers of the calls that made them. To
  find them it takes `inspect.stack()` and `inspect.getframeinfo` of each frame, which look up every
  frame's module and read a line of its source: about 7 ms per operation call here. Only file
  names and line numbers are used, and a frame holds both, so pyinfra is given them directly.
- Global arguments: pyinfra works out the types of its global arguments (`_sudo`, `_if`, ...)
  with `typing.get_type_hints` for every operation call, evaluating the same annotations each
  time (about 2 ms); they never change, so they are worked out once.

A hundred operations per host make these seconds of controller CPU at ten hosts (pyinfra 3.10,
`pyinfra.api.util` and `pyinfra.api.arguments`).
"""

from __future__ import annotations

import functools
import sys
from typing import NamedTuple

import pyinfra.api.arguments
import pyinfra.api.facts
import pyinfra.api.util


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


def install() -> None:
    pyinfra.api.util.stack = stack
    pyinfra.api.util.getframeinfo = getframeinfo
    pyinfra.api.arguments.all_global_arguments = all_global_arguments
    pyinfra.api.facts.all_global_arguments = all_global_arguments
