"""The deploy's last step: the federation check of this host's homeservers, from the controller."""

from __future__ import annotations

import time

from pyinfra import host, logger
from pyinfra.api import deploy, operation
from pyinfra.context import state

from federate.checker.policy import verify_host
from federate.pyinfra_ext.run import fail_with
from federate.settings import HostSettings

SETTLE_SECONDS = 6  # how long a failure right after the deploy may be a reload still settling


@operation()
def federation_verified(settings: HostSettings):
    """The homeservers of this host federate as their settings say, checked from the controller.

    It runs at execution time, after the host's other operations, and changes nothing: a
    converged run still reports 0 changes. A failure stops the run with the report.
    """
    names = ", ".join(hs.server_name for hs in settings.homeservers)
    if not state.is_executing:  # planning, --dry: nothing is deployed yet to check
        host.noop(f"federation check of {names} runs after the deploy")
        return
    results = verify_host(settings)
    # nginx's reload returns before its new workers answer: a failure right after the deploy is
    # checked again for a few seconds before it counts.
    deadline = time.monotonic() + SETTLE_SECONDS
    while not all(r.ok for r in results) and time.monotonic() < deadline:
        time.sleep(1)
        results = verify_host(settings)
    for result in results:
        logger.info(f"{host.print_prefix}{result.line()}")
    failed = [r for r in results if not r.ok]
    if failed:
        # A failing function command stops the run with this message and no traceback.
        yield fail_with(f"federation check failed on {settings.host} for "
                        f"{', '.join(r.server_name for r in failed)}:\n" + "\n".join(r.text() for r in failed)
                        + "\n(`federate verify INVENTORY` repeats the check; "
                          "`verify: {after_deploy: false}` turns it off)")
        return
    host.noop(f"federation verified: {names}")


@deploy("Federation check")
def after_deploy(settings: HostSettings):
    if settings.verify.after_deploy and settings.homeservers:
        federation_verified(name="from the controller", settings=settings)
