"""`federate destinations`: who each homeserver federates with, which destinations fail, and why.

Synapse's federation admin API answers on the host's loopback listener only; the command reaches it
over the deploy's SSH access with the admin token the deploy left in a root-only file there
(federate.deploy.admin): the token never leaves the host. For each failing destination the
federation checker (`federate check`) says why, seen from the controller.
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Callable

from federate.backup import Remote, inventory_hosts
from federate.checker.hints import INFO, hint, host_hints, host_probe_targets
from federate.checker.policy import failing_hints
from federate.checker.report import check_server
from federate.deploy import paths, workers
from federate.deploy.admin import token_path
from federate.deploy.hostscripts import source
from federate.manifest import BackupError
from federate.settings import Homeserver, HostSettings

WORKING, FAILING, NEVER_WORKED, INACTIVE = "working", "failing", "never-worked", "inactive"
FAILED = (FAILING, NEVER_WORKED)
SYNAPSE_FIELDS = ("failure_ts", "retry_last_ts", "retry_interval", "last_successful_stream_ordering")


class UsageError(ValueError):
    """Bad arguments: exit status 2."""


class DestinationsError(RuntimeError):
    pass


# --- what Synapse's answer means ----------------------------------------------------------------

def status_of(entry: dict) -> str:
    """failure_ts set: failing, or never-worked when no event ever reached it; else inactive when no
    room is shared with it (Synapse keeps destinations it no longer talks to), else working."""
    if entry.get("failure_ts"):
        return FAILING if entry.get("last_successful_stream_ordering") is not None else NEVER_WORKED
    return INACTIVE if not entry.get("rooms") else WORKING


def next_attempt_ts(entry: dict) -> int | None:
    """When Synapse tries again: its last try plus its current back-off (ms since the epoch)."""
    if not entry.get("retry_last_ts"):
        return None
    return entry["retry_last_ts"] + (entry.get("retry_interval") or 0)


def described(entry: dict, with_room_ids: bool) -> dict:
    """One destination as the command shows it (Synapse's fields, our status and next attempt)."""
    out = {"destination": entry["destination"], "status": status_of(entry),
           **{key: entry.get(key) for key in SYNAPSE_FIELDS},
           "next_attempt_ts": next_attempt_ts(entry), "rooms": entry.get("rooms", 0)}
    if with_room_ids:
        out["room_ids"] = entry.get("room_ids", [])
    return out


def checked(destination: str, settings: HostSettings) -> dict:
    """`federate check` of a destination from the controller, with the host's verify settings."""
    try:
        return check_server(destination, dns_server=settings.verify.dns_server, ca_file=settings.verify.ca_file,
                            timeout=settings.verify.timeout)
    except (OSError, ValueError) as error:  # a check that cannot run is a hint, not a traceback
        return {"ServerName": destination, "FederationOK": False, "Hints": [
            {"check": "general", "level": "error", "name": "check-failed", "problem": f"federate check: {error}",
             "fix": f"Run `federate check {destination}` for the details."}]}


def hints_from(report: dict, hs: Homeserver, probe: list[dict] | None = None, host: str = "") -> list[dict]:
    """The check's errors and warnings (a private address the homeserver may reach is neither), then
    what the homeserver's own host fails at where the controller got through (`probe`: the host-side
    probe of the report's targets, None when it did not run)."""
    found = failing_hints(report, hs.ip_range_whitelist) + host_hints(report, probe or [], host)
    if report["FederationOK"] and not any(h["check"] == "host" for h in found):
        probed = " (and so does the homeserver's host)" if probe else ""
        found.append(hint("reachable-now", INFO, server_name=report["ServerName"], host_too=probed))
    return [{"id": h["name"], "level": h["level"], "message": h["problem"], "fix": h["fix"]} for h in found]


# --- talking to the host --------------------------------------------------------------------------

def admin_api(remote, hs: Homeserver, *args: str) -> dict:
    """The host-side script's JSON answer; it reads the token and calls 127.0.0.1 on the host."""
    command = (f"{paths.VENV}/bin/python -c {shlex.quote(source('admin_api.py'))} "
               f"{shlex.quote(token_path(hs.server_name))} "
               f"{hs.port} {' '.join(shlex.quote(a) for a in args)}")
    output = remote.output(command)
    try:
        return json.loads(output)
    except ValueError:
        raise DestinationsError(f"host {remote.host}: unreadable answer from the admin API script: "
                                f"{output[:200]}") from None


def list_args(hs: Homeserver, with_room_ids: bool) -> list[str]:
    """The host script's `list` arguments: with metrics on, the metrics pages are read there too (the
    federation senders' with sender workers, where the queue lives)."""
    return ["list", *(["rooms"] if with_room_ids else []), *(f"metrics={url}" for url in workers.metrics_urls(hs))]


def host_probe(remote, targets: list[list]) -> list[dict] | None:
    """The targets tried again from the host (hostscripts/egress_probe.py): its resolver, its egress,
    its trust store. None when the probe cannot run (the controller's hints still stand)."""
    if not targets:
        return []
    command = (f"{paths.VENV}/bin/python -c {shlex.quote(source('egress_probe.py'))} "
               f"{shlex.quote(json.dumps(targets))}")
    try:
        return json.loads(remote.output(command))
    except (BackupError, ValueError):
        return None


def api_problem(hs: Homeserver, host: str, answer: dict) -> str:
    """One line for an answer that is not a list of destinations."""
    where = f"{hs.server_name} on {host}"
    if answer.get("kind") == "no-token":
        return f"{where}: no admin token ({answer['error']}): run the deploy, which makes it"
    if answer.get("kind") == "down":
        return f"{where}: Synapse is down: {answer['error']}"
    if answer.get("status") == 401:
        return (f"{where}: the admin token is refused ({answer.get('errcode')}): remove "
                f"{token_path(hs.server_name)} on the host and run the deploy to make a new one")
    return f"{where}: admin API answered {answer.get('status')} {answer.get('errcode')}: {answer.get('error')}"


Connect = Callable[[str, dict], object]  # (host, connection data) -> a Remote


def chosen_homeservers(settings: dict[str, HostSettings], server: str | None,
                       inventory: str) -> list[tuple[str, Homeserver]]:
    chosen = [(host, hs) for host, s in settings.items() for hs in s.homeservers
              if server is None or hs.server_name == server]
    if not chosen:
        known = ", ".join(hs.server_name for s in settings.values() for hs in s.homeservers) or "none"
        raise UsageError(f"--server {server}: no such homeserver in {inventory} (it has: {known})")
    return chosen


def gather(inventory: str, server: str | None = None, failing_only: bool = False, with_room_ids: bool = False,
           connect: Connect | None = None, check: Callable[[str, HostSettings], dict] | None = None,
           loaded=None, probe: Callable[[object, list], list | None] | None = None) -> list[dict]:
    """Per homeserver: {server_name, host, destinations: [...]} (with metrics on, also pending_pdus and
    pending_edus), or with `error` when it cannot be asked (SSH, Synapse down, no token): the others
    are still reported."""
    connect, check, probe = connect or Remote, check or checked, probe or host_probe
    settings, data = loaded or inventory_hosts(inventory)
    chosen = chosen_homeservers(settings, server, inventory)
    results, reports = [], {}
    for host in dict.fromkeys(host for host, _ in chosen):
        homeservers = [hs for h, hs in chosen if h == host]
        try:
            remote = connect(host, data[host])
        except BackupError as error:
            results += [{"server_name": hs.server_name, "host": host, "error": str(error), "destinations": []}
                        for hs in homeservers]
            continue
        try:
            for hs in homeservers:
                results.append(_homeserver(remote, host, hs, settings[host], failing_only, with_room_ids,
                                           check, reports, probe))
        finally:
            remote.close()
    return results


def _homeserver(remote, host, hs, settings, failing_only, with_room_ids, check, reports, probe) -> dict:
    result = {"server_name": hs.server_name, "host": host, "destinations": []}
    try:
        answer = admin_api(remote, hs, *list_args(hs, with_room_ids))
    except (BackupError, DestinationsError) as error:
        return {**result, "error": str(error)}
    if not answer.get("ok"):
        return {**result, "error": api_problem(hs, host, answer)}
    if hs.metrics:
        result.update(pending_fields(answer.get("pending", {})))
    items = [described(entry, with_room_ids) for entry in sorted(answer["destinations"], key=lambda e: e["destination"])]
    failed = [item for item in items if item["status"] in FAILED]
    for item in failed:
        key = (item["destination"], settings.verify)
        if key not in reports:  # one check per destination (and verify settings) and run
            reports[key] = check(item["destination"], settings)
    # One probe from the host for all its failing destinations: each name and port once.
    targets = {tuple(t): None for item in failed for t in host_probe_targets(reports[(item["destination"],
                                                                                       settings.verify)])}
    found = probe(remote, [list(t) for t in targets]) if failed else []
    for item in failed:
        report = reports[(item["destination"], settings.verify)]
        mine = {tuple(t) for t in host_probe_targets(report)}
        seen = None if found is None else [p for p in found if (p["name"], p["port"], p["tls_name"]) in mine]
        item["hints"] = hints_from(report, hs, seen, host)
    result["destinations"] = [item for item in items if item["status"] in FAILED or not failing_only]
    return result


def pending_fields(pending: dict) -> dict:
    """The federation sender's queue from the metrics page, or why it could not be read."""
    fields = {"pending_pdus": pending.get("pdus"), "pending_edus": pending.get("edus")}
    if pending.get("error") or not pending:
        fields["metrics_error"] = pending.get("error", "no answer from the metrics listener")
    return fields


def reset(inventory: str, server: str | None, destination: str, connect: Connect | None = None,
          loaded=None) -> str:
    """Reset Synapse's retry timer for `destination` on `server`: a line saying what happened."""
    if not server:
        raise UsageError("--reset: needs --server SERVER_NAME (the homeserver whose retry timer is reset)")
    settings, data = loaded or inventory_hosts(inventory)
    [(host, hs)] = chosen_homeservers(settings, server, inventory)
    remote = (connect or Remote)(host, data[host])
    try:
        answer = admin_api(remote, hs, "reset", destination)
    finally:
        remote.close()
    if answer.get("ok"):
        return f"{server}: retry timer of {destination} reset: queued events go out now"
    if answer.get("status") == 404:
        raise DestinationsError(f"--reset {destination}: {server} does not know this destination "
                                f"(`federate destinations INVENTORY --server {server}` lists those it knows)")
    if answer.get("status") == 400:
        return f"{server}: {destination} is not backing off: nothing to reset"
    raise DestinationsError(api_problem(hs, host, answer))


def exit_status(results: list[dict]) -> int:
    """0 when every homeserver answered and no destination fails."""
    failed = any(r.get("error") or any(d["status"] in FAILED for d in r["destinations"]) for r in results)
    return 1 if failed else 0


# --- for people -------------------------------------------------------------------------------------

def relative(ms: int | None, now_ms: int) -> str:
    """'3 min ago', 'in 7 min', '-' for none."""
    if not ms:
        return "-"
    seconds = (ms - now_ms) / 1000
    size = abs(seconds)
    if size < 60:
        amount = f"{size:.0f} s"
    elif size < 3600:
        amount = f"{size / 60:.0f} min"
    elif size < 48 * 3600:
        amount = f"{size / 3600:.0f} h"
    else:
        amount = f"{size / 86400:.0f} days"
    return f"in {amount}" if seconds > 0 else f"{amount} ago"


COLUMNS = ("DESTINATION", "STATUS", "ROOMS", "FAILING SINCE", "LAST TRY", "NEXT TRY")


def format_table(results: list[dict], now_ms: int | None = None) -> str:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    lines = []
    for result in results:
        title = f"{result['server_name']} on {result['host']}"
        if result.get("error"):
            lines.append(f"{title}: cannot list destinations: {result['error']}")
            continue
        destinations = result["destinations"]
        failing = sum(d["status"] in FAILED for d in destinations)
        lines.append(f"{title}: {len(destinations)} destination{'s' * (len(destinations) != 1)}, "
                     f"{failing or 'none'} failing{queue_summary(result)}")
        lines += _table(destinations, now_ms)
    return "\n".join(lines)


def queue_summary(result: dict) -> str:
    """'; queued: 1 PDU, 0 EDUs' with metrics on (nothing without)."""
    if "pending_pdus" not in result:
        return ""
    if result.get("metrics_error"):
        return f"; queue unknown ({result['metrics_error']})"
    pdus, edus = result["pending_pdus"], result["pending_edus"]
    return f"; queued: {pdus} PDU{'s' * (pdus != 1)}, {edus} EDU{'s' * (edus != 1)}"


def _table(destinations: list[dict], now_ms: int) -> list[str]:
    """Aligned columns; each destination followed by its rooms and hints."""
    rows = [COLUMNS] + [(d["destination"], d["status"], str(d["rooms"]), relative(d["failure_ts"], now_ms),
                         relative(d["retry_last_ts"], now_ms), relative(d["next_attempt_ts"], now_ms))
                        for d in destinations]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for row, entry in zip(rows, [None, *destinations]):
        lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if entry is not None:
            lines += _details(entry)
    return lines


def _details(entry: dict) -> list[str]:
    lines = [f"      room {room}" for room in entry.get("room_ids", [])]
    for h in entry.get("hints", []):
        lines.append(f"      [{h['level'].upper()}] {h['id']}: {h['message']}")
        lines.append(f"        fix: {h['fix']}")
    return lines


def command(args, out: Callable[[str], None] = print) -> int:
    """The CLI: 2 for bad arguments, else 0 when nothing fails."""
    if args.reset is not None:
        if args.failing or args.rooms:
            raise UsageError("--reset: not with --failing or --rooms (it lists nothing)")
        line = reset(args.inventory, args.server, args.reset)
        out(json.dumps({"server_name": args.server, "reset": args.reset, "result": line}) if args.json else line)
        return 0
    results = gather(args.inventory, args.server, args.failing, args.rooms)
    out(json.dumps(results, indent=2) if args.json else format_table(results))
    return exit_status(results)
