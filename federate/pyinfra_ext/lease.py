"""One run at a time per host: a deploy lock held as a lease.

The lock is a small file in /run (gone after a reboot) naming the run that holds it and when its
lease ends. A run takes it before its first change, renews it as it goes, and removes it after
its last operation, or as soon as one of its operations fails. A run that was cut off (SIGKILL,
lost connection) cannot remove it, but its lease runs out: the next run takes over then. Another
run's live lease stops a run before it changes anything, or it waits up to `wait` seconds.

Taking, renewing and releasing happen while the run executes (never in --dry), and count as no
change: a converged host still reports 0 changed operations.
"""

from __future__ import annotations

import shlex
import time

from pyinfra import host, logger
from pyinfra.api import FactBase, StringCommand, operation
from pyinfra.api.state import BaseStateCallback
from pyinfra.context import state

from federate.pyinfra_ext.factcache import forget
from federate.pyinfra_ext.run import HOLDER, RUN_ID, fail_with

LOCK = "/run/federate/deploy.lock"

# Each action runs under flock, so reading and writing the lock is one step for concurrent runs.
# It prints one line: acquired | took-over<TAB>old holder | refreshed | released | held<TAB>holder<TAB>expiry
# | lost<TAB>holder.
_SCRIPT = r'''
umask 077; mkdir -p "$(dirname "$L")"
exec 9>>"$L.guard"
end=$(( $(date +%s) + WAIT ))
while :; do
  flock -x 9
  now=$(date +%s); id=""; exp=0; who=""
  if [ -s "$L" ]; then id=$(sed -n 1p "$L"); exp=$(sed -n 2p "$L"); who=$(sed -n 3p "$L"); fi
  mine=no; [ "$id" = "$RUN" ] && mine=yes
  free=no; { [ -z "$id" ] || [ "$exp" -le "$now" ]; } && free=yes
  case "$ACTION" in
    acquire)
      if [ $mine = yes ] || [ $free = yes ]; then
        printf '%s\n%s\n%s\n' "$RUN" $((now + LEASE)) "$WHO" > "$L.new" && mv -f "$L.new" "$L"
        if [ $mine = no ] && [ -n "$id" ]; then printf 'took-over\t%s\n' "$who"; else echo acquired; fi
        exit 0
      fi ;;
    refresh)
      if [ $mine = yes ]; then
        printf '%s\n%s\n%s\n' "$RUN" $((now + LEASE)) "$WHO" > "$L.new" && mv -f "$L.new" "$L"
        echo refreshed; exit 0
      fi
      printf 'lost\t%s\n' "${who:-nobody}"; exit 0 ;;
    release)
      [ $mine = yes ] && rm -f "$L"
      echo released; exit 0 ;;
  esac
  flock -u 9
  if [ "$now" -ge "$end" ]; then printf 'held\t%s\t%s\n' "$who" "$(date -u -d "@$exp" '+%Y-%m-%d %H:%M:%S UTC')"; exit 0; fi
  sleep 1
done
'''


def lease_script(action: str, lease: int = 0, wait: int = 0, lock: str = LOCK, run: str = RUN_ID,
                 holder: str = HOLDER) -> str:
    variables = {"ACTION": action, "LEASE": str(int(lease)), "WAIT": str(int(wait)), "L": lock,
                 "RUN": run, "WHO": holder}
    assignments = " ".join(f"{name}={shlex.quote(value)}" for name, value in variables.items())
    return f"{assignments} sh -c {shlex.quote(_SCRIPT)}"


class Lease(FactBase):
    """Acts on the lock (acquire, refresh, release) and reports the outcome as a list of fields.
    A fact with a side effect, so that holding the lock never counts as a change."""

    def command(self, action: str, lease: int = 0, wait: int = 0) -> str:
        return lease_script(action, lease, wait)

    def process(self, output):
        return "".join(output).strip().split("\t")


class LockHolder(FactBase):
    """Who holds the deploy lock and until when (seconds since the epoch), or None."""

    def command(self) -> str:
        return f"[ -s {LOCK} ] && sed -n '3p;2p' {LOCK} || true"

    def process(self, output):
        lines = [line.strip() for line in output if line.strip()]
        return {"expires": int(lines[0]), "holder": lines[1]} if len(lines) == 2 else None


_holding: set[str] = set()  # hosts whose lock this run holds
_renewed: dict[str, float] = {}  # host name -> when (controller's monotonic clock) this run last took or renewed its lease
RENEW_AFTER = 0.1  # share of the lease gone before a renewal asks the host: a quick run never renews


class _ReleaseOnError(BaseStateCallback):
    """A failed operation ends the host's run: release its lock at once."""

    @staticmethod
    def operation_host_error(state, host, op_hash, retry_count=0, max_retries=0):
        op_data = state.get_op_data_for_host(host, op_hash)
        if host.name in _holding and not op_data.global_arguments.get("_ignore_errors"):
            _holding.discard(host.name)
            host.run_shell_command(StringCommand(lease_script("release")))


@operation()
def lock_acquired(lease: int, wait: int):
    """This run holds the host's deploy lock (waiting up to `wait` seconds for another run's)."""
    if not state.is_executing:
        host.noop("the deploy lock is taken when the run executes")
        return
    if not any(isinstance(h, _ReleaseOnError) for h in state.callback_handlers):
        state.add_callback_handler(_ReleaseOnError())
    started = time.monotonic()  # the lease runs from before the host was asked
    answer = host.get_fact(Lease, action="acquire", lease=lease, wait=wait)
    if answer[0] == "held":
        yield fail_with(f"another federate run holds the deploy lock of {host.name}: {answer[1]}, its lease "
                        f"ends {answer[2]}. Nothing was changed. Run again when it is done (or set lock.wait "
                        f"to wait for it); README, 'One run at a time'.")
        return
    _holding.add(host.name)
    _renewed[host.name] = started
    forget()  # facts read before the lock was held: another run may have changed the host since
    if answer[0] == "took-over":  # worth knowing: that run was cut off and may have left work undone
        logger.warning(f"{host.print_prefix}deploy lock taken over from a run whose lease ended: {answer[1]}")
    host.noop(f"deploy lock held by this run for {lease} s at a time")


@operation()
def lock_renewed(lease: int):
    """The lease starts again; a run that lost its lock (its lease ran out and another run took
    over) stops here instead of changing the host beside the other run."""
    if not state.is_executing:
        host.noop("the deploy lock is renewed when the run executes")
        return
    if time.monotonic() - _renewed.get(host.name, float("-inf")) < lease * RENEW_AFTER:
        # nearly all of the lease is left, so it cannot have run out: no round trip
        host.noop("deploy lock taken moments ago, nothing to renew")
        return
    started = time.monotonic()
    answer = host.get_fact(Lease, action="refresh", lease=lease)
    if answer[0] == "lost":
        _holding.discard(host.name)
        yield fail_with(f"this run's deploy lock of {host.name} ran out and was taken by {answer[1]}: "
                        "stopping here (a longer lock.lease avoids this)")
        return
    _renewed[host.name] = started
    host.noop("deploy lock renewed")


@operation()
def lock_released():
    if not state.is_executing:
        host.noop("the deploy lock is released when the run ends")
        return
    host.get_fact(Lease, action="release")
    _holding.discard(host.name)
    host.noop("deploy lock released")
    yield from ()  # an operation is a generator, even with nothing to run
