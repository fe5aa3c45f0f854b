"""`federate` command line. Subcommands register themselves in `build_parser` (one function each)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from federate.check import add_check_parser
from federate.prove import add_prove_parser
from federate.verify import add_verify_parser


def _print(message: str) -> None:
    print(message, flush=True)


# --- federate lab ----------------------------------------------------------------------------------

def add_lab_parser(subparsers) -> None:
    lab = subparsers.add_parser("lab", help="disposable Debian hosts (systemd-nspawn) to deploy to")
    actions = lab.add_subparsers(dest="lab_action", required=True)
    for action, text in (("up", "boot the lab (or report the running one)"),
                         ("down", "remove everything the lab made"),
                         ("status", "show what runs")):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("--name", default="demo", help="lab name (default: demo, state in .lab/)")
        if action == "up":
            sub.add_argument("--topology", type=Path, help="JSON file: hosts and their homeservers")
        if action == "status":
            sub.add_argument("--json", action="store_true", help="print the status as JSON")
    lab.set_defaults(handler=run_lab)


def run_lab(args) -> int:
    from federate.lab import Lab

    lab = Lab(args.name, root=Path.cwd(), log=_print)
    start = time.monotonic()
    if args.lab_action == "up":
        info = lab.up(args.topology)
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
        _print(f"  {host:<8} {data['address']:<15} {' '.join(names)}")
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
        _print(f"  host    {host:<10} {data['address']:<15} "
               f"{'running' if data['running'] else 'stopped'}, ssh {'answers' if data['ssh'] else 'closed'}")


# --- main ------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="federate", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_lab_parser(subparsers)
    add_prove_parser(subparsers)
    add_check_parser(subparsers)
    add_verify_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (RuntimeError, ValueError, OSError) as error:
        print(f"federate: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
