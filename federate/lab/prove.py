"""Proving a deployed lab from the controller: what a remote server and a user's client see.

Used by `make demo` (`federate prove`) and the lab tests. It reads the same inventory the
deploy used, so it checks what the settings promise, not what the templates happen to say.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from nio import ErrorResponse

from federate.checker.http import https_get, verify_server_keys
from federate.deploy import paths
from federate.deploy.users import controller_password
from federate.inventory import load_settings
from federate.lab.clients import Account, attempts_from_outside, room_across_servers
from federate.lab.hosts import ssh
from federate.settings import Homeserver, HostSettings


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        return f"  [{'PASS' if self.ok else 'FAIL'}] {self.name}" + (f": {self.detail}" if self.detail else "")


def _check(name: str, func) -> Check:
    try:
        detail = func()
        return Check(name, True, detail or "")
    except Exception as error:  # every failure becomes a FAIL line naming what went wrong
        return Check(name, False, f"{type(error).__name__}: {error}")


def _expect(condition: bool, message: str):
    if not condition:
        raise AssertionError(message)


def well_known_checks(hs: Homeserver, dns: str, ca_file: str) -> list[Check]:
    def fetch(kind: str):
        reply = https_get(hs.host_name, 443, f"/.well-known/matrix/{kind}", ca_file=ca_file, dns_server=dns)
        _expect(reply.status == 200, f"HTTP {reply.status} (must be a plain 200, no redirect)")
        _expect(reply.headers.get("content-type", "").startswith("application/json"),
                f"content-type {reply.headers.get('content-type')!r}")
        _expect(reply.headers.get("access-control-allow-origin") == "*", "no CORS header")
        return reply.json()

    def server():
        document = fetch("server")
        _expect(document.get("m.server") == f"{hs.public_host}:443", f"m.server is {document.get('m.server')!r}")
        return json.dumps(document)

    def client():
        document = fetch("client")
        base = document.get("m.homeserver", {}).get("base_url")
        _expect(base == f"https://{hs.public_host}", f"base_url is {base!r}")
        return json.dumps(document)

    return [_check(f"{hs.server_name}: /.well-known/matrix/server", server),
            _check(f"{hs.server_name}: /.well-known/matrix/client", client)]


def federation_checks(hs: Homeserver, dns: str, ca_file: str) -> list[Check]:
    def version():
        reply = https_get(hs.public_host, 8448, "/_matrix/federation/v1/version", ca_file=ca_file, dns_server=dns)
        _expect(reply.status == 200, f"HTTP {reply.status}")
        server = reply.json()["server"]
        return f"{server['name']} {server['version']} (TLS valid for {hs.public_host})"

    def keys():
        reply = https_get(hs.public_host, 8448, "/_matrix/key/v2/server", ca_file=ca_file, dns_server=dns)
        _expect(reply.status == 200, f"HTTP {reply.status}")
        document = reply.json()
        _expect(document.get("server_name") == hs.server_name, f"server_name is {document.get('server_name')!r}")
        _expect(document.get("valid_until_ts", 0) > time.time() * 1000, "valid_until_ts is in the past")
        checks = verify_server_keys(document, hs.server_name)
        _expect(bool(checks), "no ed25519 key")
        _expect(all(c.valid for c in checks), "; ".join(f"{c.key_id}: {c.problem}" for c in checks if not c.valid))
        return ", ".join(f"{c.key_id} signature valid" for c in checks)

    return [_check(f"{hs.server_name}: federation version on {hs.public_host}:8448", version),
            _check(f"{hs.server_name}: signed server keys", keys)]


def account(settings: HostSettings, hs: Homeserver) -> Account:
    user = hs.users[0]
    return Account(hs.server_name, f"https://{hs.public_host}", user.localpart,
                   controller_password(settings.secrets_dir, hs.server_name, user.localpart))


def accounts(all_settings: dict[str, HostSettings]) -> dict[str, Account]:
    """The first user's account of every homeserver that has users, by server name."""
    return {hs.server_name: account(s, hs) for s in all_settings.values() for hs in s.homeservers if hs.users}


def external_pair(all_settings: dict[str, HostSettings]):
    """Two external homeservers with users, on different hosts (None if the lab has no such pair)."""
    candidates = [(s, hs) for s in all_settings.values() for hs in s.homeservers
                  if hs.profile == "external" and hs.users]
    for i, (s1, hs1) in enumerate(candidates):
        for s2, hs2 in candidates[i + 1:]:
            if s1.host != s2.host:
                return (s1, hs1), (s2, hs2)
    return None


def federation_room_check(all_settings, dns: str, ca_file: str, messages: int = 1) -> Check:
    pair = external_pair(all_settings)
    if pair is None:
        return Check("room across hosts", False, "no two external homeservers with users on different hosts")
    (s1, hs1), (s2, hs2) = pair
    a, b = account(s1, hs1), account(s2, hs2)

    return _check(f"room across hosts ({hs1.server_name} <-> {hs2.server_name})",
                  lambda: _room_detail(a, b, dns, ca_file, messages))


def internal_policy_checks(all_settings, dns: str, ca_file: str) -> list[Check]:
    """An internal server talks to its whitelisted partners and refuses everyone else."""
    users = accounts(all_settings)
    checks = []
    for hs in (hs for s in all_settings.values() for hs in s.homeservers if hs.profile == "internal"):
        if hs.server_name not in users:
            continue
        insider = users[hs.server_name]
        for partner in (name for name in hs.federation_whitelist or () if name in users):
            checks.append(_check(f"{hs.server_name}: room with whitelisted {partner}",
                                 lambda p=users[partner]: _room_detail(insider, p, dns, ca_file)))
        outsiders = [name for name in users
                     if name not in (hs.federation_whitelist or ()) and name != hs.server_name
                     and _host_of(all_settings, name) != _host_of(all_settings, hs.server_name)]
        for outsider in outsiders[:1]:
            try:
                attempts = asyncio.run(attempts_from_outside(users[outsider], insider, dns, ca_file))
            except Exception as error:
                checks.append(Check(f"{hs.server_name}: refuses {outsider}", False, f"{type(error).__name__}: {error}"))
                continue
            for what, reply in attempts.items():
                # nio sometimes files the remote server's answer under status_code: read both
                reason = f"{reply.message or ''} {reply.status_code or ''}" if isinstance(reply, ErrorResponse) else ""
                checks.append(Check(f"{hs.server_name}: {what} from {outsider} refused",
                                    "Federation denied" in reason, reason.strip() or "it was allowed"))
    return checks


INBOUND = "PUT /_matrix/federation/v1/send/"
OUTBOUND = "/_matrix/federation/v1/send/"  # in the sender's log as "PUT matrix-federation://<peer>/..."


def journal(lab: dict, host: str, units: list[str]) -> str:
    """The journal of `units` on a lab host, messages only."""
    spec = lab["hosts"][host]
    command = "journalctl -q --no-pager -o cat " + " ".join(f"-u {unit}" for unit in units)
    result = ssh(spec["address"], Path(lab["ssh_key"]), Path(lab["known_hosts"]), command)
    _expect(result.returncode == 0, f"journalctl on {host} failed: {result.stderr.strip()}")
    return result.stdout


def worker_checks(all_settings, lab: dict) -> list[Check]:
    """A homeserver with workers: inbound federation transactions reached its federation readers and
    outbound ones left from its federation senders, none through the main process (read from the
    journals, after the room check has sent both ways)."""
    checks = []
    for settings in all_settings.values():
        for hs in (hs for hs in settings.homeservers if hs.workers.enabled):
            def served(hs=hs, host=settings.host):
                main = journal(lab, host, [paths.unit(hs.server_name)])
                readers = journal(lab, host, [paths.worker_unit(hs.server_name, w) for w, _ in hs.workers.readers])
                senders = journal(lab, host, [paths.worker_unit(hs.server_name, w) for w in hs.workers.senders])
                _expect(INBOUND in readers, "no inbound transaction in the federation readers' logs")
                _expect(INBOUND not in main, "the main process served an inbound transaction")
                _expect("matrix-federation://" in senders and OUTBOUND in senders,
                        "no outbound transaction in the federation senders' logs")
                _expect(not any("matrix-federation://" in line and OUTBOUND in line for line in main.splitlines()),
                        "the main process sent a transaction")
                return (f"inbound /send/ served by {', '.join(w for w, _ in hs.workers.readers)}; outbound sent by "
                        f"{', '.join(hs.workers.senders)}; none by the main process")
            checks.append(_check(f"{hs.server_name}: federation through its workers", served))
    return checks


def _room_detail(a: Account, b: Account, dns: str, ca_file: str, messages: int = 1) -> str:
    result = asyncio.run(room_across_servers(a, b, dns, ca_file, messages=messages))
    return (f"{a.user_id} and {b.user_id} joined {result.room_id}; {len(result.latencies)} messages, "
            f"median {statistics.median(result.latencies) * 1000:.0f} ms send->seen")


def _host_of(all_settings, server_name: str) -> str | None:
    return next((s.host for s in all_settings.values() for hs in s.homeservers if hs.server_name == server_name), None)


def prove(lab: dict, messages: int = 1) -> list[Check]:
    all_settings = load_settings(lab["inventory"])
    dns, ca_file = lab["dns"], lab["ca_file"]
    checks: list[Check] = []
    for settings in all_settings.values():
        for hs in settings.homeservers:
            if hs.profile == "external":
                checks += well_known_checks(hs, dns, ca_file) + federation_checks(hs, dns, ca_file)
    room = federation_room_check(all_settings, dns, ca_file, messages)
    return checks + [room] + worker_checks(all_settings, lab) + internal_policy_checks(all_settings, dns, ca_file)


def prove_command(args) -> int:
    """`federate prove`: the checks against a lab, a line each."""
    lab = json.loads(Path(args.lab_json).read_text())
    checks = prove(lab, messages=args.messages)
    print(f"federate prove: {len(checks)} checks against lab '{lab.get('name', '?')}'")
    for check in checks:
        print(check.line())
    failed = [c for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0
