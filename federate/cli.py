"""federate: check and verify Matrix federation, describe host data, and run the lab of test hosts.

Deploys run with pyinfra: `pyinfra INVENTORY deploy.py` (README, "Use as a library").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

LAB_EXTRA_MISSING = ("federate {command} needs the lab extra (matrix-nio and the lab tools): "
                     "pip install 'federate[lab]'")


def _print(message: str) -> None:
    print(message, flush=True)


def _log(message: str) -> None:
    """Progress and check lines: stderr, so stdout stays the command's result."""
    print(message, file=sys.stderr, flush=True)


# --- federate check / verify: the federation checker, in every install ---------------------------

def add_check_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "check", help="test a homeserver's federation like a remote server would (the federation tester)")
    parser.add_argument("server_name", metavar="SERVER_NAME", help="the server name (the part after ':' in user IDs)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (federation tester fields)")
    parser.add_argument("--dns-server", metavar="IP", help="ask this DNS server (IP or IP:PORT) instead of the system's")
    parser.add_argument("--ca-file", metavar="PEM", help="trust these CA certificates instead of the system's")
    parser.add_argument("--timeout", metavar="S", type=float, default=10.0, help="seconds per connection")
    parser.set_defaults(handler=check_command)


def check_command(args) -> int:
    from federate.checker.report import check_server
    from federate.checker.text import format_report

    report = check_server(args.server_name, dns_server=args.dns_server, ca_file=args.ca_file,
                          timeout=args.timeout)
    _print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["FederationOK"] else 1


def add_verify_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify", help="check every homeserver of an inventory against its federation settings")
    parser.add_argument("inventory", metavar="INVENTORY", help="the pyinfra inventory file the deploy used")
    parser.add_argument("--dns-server", metavar="IP", help="ask this DNS server (default: each host's "
                        "verify.dns_server, else the system's)")
    parser.add_argument("--ca-file", metavar="PEM", help="trust these CAs (default: each host's "
                        "verify.ca_file, else the system's)")
    parser.add_argument("--timeout", metavar="S", type=float, help="seconds per connection "
                        "(default: each host's verify.timeout)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(handler=verify_command)


def verify_command(args) -> int:
    from federate.checker.policy import format_results, verify_settings
    from federate.inventory import load_settings

    results = verify_settings(load_settings(args.inventory), args.dns_server, args.ca_file, args.timeout)
    ok = all(r.ok for r in results)
    if args.json:
        _print(json.dumps({"ok": ok, "results": [asdict(r) for r in results]}, indent=2))
    else:
        _print(format_results(results))
    return 0 if ok else 1


def add_drift_parser(subparsers) -> None:
    parser = subparsers.add_parser("drift", help="run the deploy read-only: exit 1 and name what drifted "
                                                 "(for cron and CI)")
    parser.add_argument("inventory", metavar="INVENTORY", help="the pyinfra inventory file the deploy uses")
    parser.add_argument("--deploy", metavar="FILE", help="your own deploy file (default: federate's, the "
                        "two-line deploy_homeservers())")
    parser.add_argument("--json", action="store_true", help="print {ok, drifted, changes: {host: [operation]}, "
                        "errors: {host: why}}")
    parser.set_defaults(handler=drift_command)


def drift_command(args) -> int:
    from federate.drift import check_drift, format_drift

    drift = check_drift(args.inventory, args.deploy)
    if args.json:
        _print(json.dumps({"ok": drift.ok, "drifted": bool(drift.changes), "changes": drift.changes,
                           "errors": drift.errors}, indent=2))
    else:
        _print(format_drift(drift))
    return 2 if not drift.ok else (1 if drift.changes else 0)


def add_backup_parser(subparsers) -> None:
    parser = subparsers.add_parser("backup", help="copy each homeserver's database, signing key, secrets, local "
                                                  "media and config to this machine (over the deploy's SSH)")
    parser.add_argument("inventory", metavar="INVENTORY", help="the pyinfra inventory file the deploy uses")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--to", metavar="DIR", help="backup folder (one DIR/<server_name>/<UTC time>/ per "
                      "homeserver; 0700)")
    what.add_argument("--verify", metavar="DIR", help="check one backup (the folder with manifest.json) instead: "
                      "hashes, key, secrets, archives, and its database restored into a scratch database "
                      "(PostgreSQL: on the homeserver's host, dropped again)")
    parser.add_argument("--server", metavar="SERVER_NAME", help="only this homeserver (with --to)")
    parser.set_defaults(handler=backup_command)


def backup_command(args) -> int:
    from federate.backup import backup

    if args.verify:
        return backup_verify_command(args)
    for folder in backup(args.inventory, args.to, args.server):
        _print(str(folder))
    return 0


def backup_verify_command(args) -> int:
    from federate.backup_verify import verify

    if args.server:
        raise ValueError("--server: only with --to (--verify takes the server name from the backup's manifest)")
    identity = verify(args.inventory, args.verify, _log)
    _log(f"federate backup --verify: {args.verify}: every check passed (backup id sha256:{identity})")
    return 0


def add_destinations_parser(subparsers) -> None:
    parser = subparsers.add_parser("destinations", help="the servers each homeserver federates with, which fail and "
                                                       "why (Synapse's admin API, over the deploy's SSH)")
    parser.add_argument("inventory", metavar="INVENTORY", help="the pyinfra inventory file the deploy uses")
    parser.add_argument("--server", metavar="SERVER_NAME", help="only this homeserver")
    parser.add_argument("--failing", action="store_true", help="only destinations that fail")
    parser.add_argument("--rooms", action="store_true", help="list the ids of the rooms shared with each")
    parser.add_argument("--json", action="store_true", help="print a list of {server_name, host, destinations}")
    parser.add_argument("--reset", metavar="DESTINATION", help="with --server: reset Synapse's retry timer for "
                        "DESTINATION, so queued events go out now")
    parser.set_defaults(handler=destinations_command)


def destinations_command(args) -> int:
    from federate.destinations import UsageError, command

    try:
        return command(args, _print)
    except UsageError as error:
        print(f"federate: {error}", file=sys.stderr)
        return 2


def add_schema_parser(subparsers) -> None:
    parser = subparsers.add_parser("schema", help="print the JSON Schema of host data (for editors and CI)")
    parser.set_defaults(handler=schema_command)


def schema_command(args) -> int:
    from federate.host_data import schema

    _print(json.dumps(schema(), indent=2))
    return 0


def add_synapse_lock_parser(subparsers) -> None:
    from federate.deploy.debian import RELEASES

    pythons = sorted({r.python for r in RELEASES.values()})
    parser = subparsers.add_parser(
        "synapse-lock", help="pin and hash Synapse and its dependencies for a synapse_version (needs uv)")
    parser.add_argument("version", metavar="VERSION", help="the matrix-synapse version (synapse_version)")
    parser.add_argument("--python", action="append", metavar="X.Y",
                        help=f"a Python to lock for, repeatable (default: {' and '.join(pythons)}, "
                             "the python3 of each supported Debian release)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="where to write the locks (default: federate's "
                        "own lock folder, which the deploy from this install reads)")
    parser.set_defaults(handler=synapse_lock_command, default_pythons=pythons)


def synapse_lock_command(args) -> int:
    from federate.deploy.locks import LOCK_DIR, make_lock, make_uv_lock, pins

    made = [make_lock(args.version, python, args.out or LOCK_DIR, redis=redis)
            for python in args.python or args.default_pythons
            for redis in (False, True)]  # the plain lock first: the Redis lock (workers) starts from it
    made.append(make_uv_lock(args.out or LOCK_DIR))  # the uv that installs them on the hosts
    for path in made:
        text = path.read_text()
        _print(f"{path}: {len(pins(text))} packages, {text.count('--hash=')} hashes, {len(text) // 1024} KiB")
    return 0


# --- federate lab / prove: only with the lab extra ---------------------------------------------

def add_lab_parser(subparsers) -> None:
    from federate.deploy.debian import RELEASES

    lab = subparsers.add_parser("lab", help="disposable Debian hosts (systemd-nspawn) to deploy to "
                                            "(needs federate[lab])")
    actions = lab.add_subparsers(dest="lab_action", required=True)
    for action, text in (("up", "boot the lab (or report the running one)"),
                         ("down", "remove everything the lab made"),
                         ("status", "show what runs")):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("--name", default="demo", help="lab name (default: demo, state in .lab/)")
        if action == "up":
            sub.add_argument("--topology", type=Path, help="JSON file: hosts and their homeservers")
            sub.add_argument("--release", choices=[r.codename for r in RELEASES.values()],
                             help="Debian release of hosts whose topology names none (default: bookworm; "
                                  "the demo topology runs hs1 on bookworm and hs2 on trixie)")
        if action == "status":
            sub.add_argument("--json", action="store_true", help="print the status as JSON")
    lab.set_defaults(handler=run_lab)


def run_lab(args) -> int:
    from federate.lab import Lab

    lab = Lab(args.name, root=Path.cwd(), log=_print)
    start = time.monotonic()
    if args.lab_action == "up":
        info = lab.up(args.topology, args.release)
        _print(f"lab {args.name} up in {time.monotonic() - start:.1f}s")
        _print_info(info)
    elif args.lab_action == "down":
        lab.down()
        _print(f"lab {args.name} down in {time.monotonic() - start:.1f}s")
    else:
        report = lab.status()
        if args.json:
            _print(json.dumps(report, indent=2))
        else:
            _print_status(report)
        return 0 if report.get("up") else 3
    return 0


def _print_info(info: dict) -> None:
    _print(f"  bridge {info['bridge']} {info['subnet']}, DNS {info['dns']}, ACME {info['acme_directory']}")
    for host, data in info["hosts"].items():
        names = [hs["server_name"] for hs in info["homeservers"] if hs["host"] == host]
        _print(f"  {host:<8} {data['address']:<15} {data.get('release', ''):<9} {' '.join(names)}")
    _print(f"  inventory  {info['inventory']}")
    _print(f"  CA bundle  {info['ca_file']}")
    first = next(iter(info["hosts"].values()))["address"]
    _print(f"  ssh -i {info['ssh_key']} -o UserKnownHostsFile={info['known_hosts']} root@{first}")


def _print_status(report: dict) -> None:
    if "bridge" not in report:
        _print(f"lab {report['name']}: not running")
        return
    _print(f"lab {report['name']}: {'up' if report['up'] else 'NOT fully up'} "
           f"(bridge {report['bridge']} {report['subnet']})")
    for name, alive in report["services"].items():
        _print(f"  service {name:<10} {'running' if alive else 'stopped'}")
    for host, data in report["hosts"].items():
        lock = data.get("deploy_lock")
        held = f", deploy lock held by {lock['holder']} until {lock['lease_ends']}" if lock else ""
        _print(f"  host    {host:<10} {data['address']:<15} {data.get('release') or '':<9} "
               f"{'running' if data['running'] else 'stopped'}, ssh {'answers' if data['ssh'] else 'closed'}{held}")


def add_prove_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prove", help="check a deployed lab from outside: well-known, TLS, keys, a room across hosts "
                      "(needs federate[lab])")
    parser.add_argument("--lab-json", default=".lab/lab.json", help="the lab's lab.json (default: the demo lab)")
    parser.add_argument("--messages", type=int, default=3, help="messages each way in the cross-host room")
    parser.set_defaults(handler=prove)


def prove(args) -> int:
    from federate.lab.prove import prove_command

    return prove_command(args)


# --- main ----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="federate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_check_parser(subparsers)
    add_verify_parser(subparsers)
    add_drift_parser(subparsers)
    add_backup_parser(subparsers)
    add_destinations_parser(subparsers)
    add_schema_parser(subparsers)
    add_synapse_lock_parser(subparsers)
    add_lab_parser(subparsers)
    add_prove_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Inventories are loaded with pyinfra's CLI code, which patches the standard library for
    # gevent when imported; patch first, as pyinfra's own CLI does, before ssl is in use.
    from gevent import monkey

    monkey.patch_all()
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ModuleNotFoundError as error:
        if args.command in ("lab", "prove"):
            print(f"federate: {LAB_EXTRA_MISSING.format(command=args.command)} ({error})", file=sys.stderr)
            return 1
        raise
    except (RuntimeError, ValueError, OSError) as error:
        print(f"federate: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
