"""This pyinfra run: an identity unique per controller process, for locks and temporary names."""

from __future__ import annotations

import datetime
import getpass
import os
import secrets
import socket

from pyinfra import logger
from pyinfra.api import FunctionCommand

RUN_ID = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
STARTED = datetime.datetime.now(datetime.timezone.utc)
# Who holds a lock, in words: controller user and host, process, start time.
HOLDER = f"{getpass.getuser()}@{socket.gethostname()} (pid {os.getpid()}, started {STARTED:%Y-%m-%d %H:%M:%S} UTC)"


def temporary_name(path: str, kind: str = "new") -> str:
    """A name beside `path` that no other run uses: two runs never write the same temporary file."""
    return f"{path}.federate-{kind}-{RUN_ID}"


def fail_with(message: str) -> FunctionCommand:
    """A command that fails the operation (and stops the host's run) with `message`, no traceback."""
    def fail(state, host) -> bool:
        host.log_styled(message, fg="red", log_func=logger.error)
        return False
    return FunctionCommand(fail, (), {})
