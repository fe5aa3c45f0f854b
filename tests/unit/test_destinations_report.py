"""`federate destinations`: the host-side script runs here unchanged (with sh, as over SSH) against a
small HTTP server that answers like Synapse's federation admin API; only the SSH transport is faked."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import parse_qs, unquote, urlparse

import pytest

from federate import destinations as dest
from federate.cli import main
from federate.deploy import admin, paths
from federate.manifest import BackupError
from federate.checker.hints import host_probe_targets
from federate.settings import Metrics, Workers, host_settings

TOKEN = "syt_secret-token-value"
NOW = 1_700_000_000_000
API = "/_synapse/admin/v1/federation/destinations"


class FakeSynapse(BaseHTTPRequestHandler):
    """Synapse's pagination: `from`/`limit` (default 100), `total`, `next_token` while more remain."""
    destinations: list[dict] = []
    rooms: dict[str, list[str]] = {}
    requests: list[str] = []
    metrics_page = ""

    def log_message(self, *args):
        pass

    def _answer(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _page(self, items: list, key: str, query: dict):
        start, limit = int(query.get("from", ["0"])[0]), int(query.get("limit", ["100"])[0])
        body = {key: items[start:start + limit], "total": len(items)}
        if start + limit < len(items):
            body["next_token"] = str(start + len(body[key]))
        self._answer(200, body)

    def _authorized(self) -> bool:
        self.requests.append(self.path)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._answer(401, {"errcode": "M_UNKNOWN_TOKEN", "error": "Invalid access token passed."})
            return False
        return True

    def do_GET(self):
        if self.path == "/_synapse/metrics":  # the metrics listener asks for no token
            data = self.metrics_page.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return self.wfile.write(data)
        if not self._authorized():
            return
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path == API:
            return self._page(self.destinations, "destinations", query)
        name = unquote(url.path[len(API) + 1:].removesuffix("/rooms"))
        rooms = [{"room_id": r, "stream_ordering": 1} for r in self.rooms.get(name, [])]
        self._page(rooms, "rooms", query)

    def do_POST(self):
        if not self._authorized():
            return
        name = unquote(urlparse(self.path).path[len(API) + 1:].removesuffix("/reset_connection"))
        known = {d["destination"]: d for d in self.destinations}
        if name not in known:
            return self._answer(404, {"errcode": "M_NOT_FOUND", "error": "Unknown destination"})
        if not known[name].get("retry_last_ts"):
            return self._answer(400, {"errcode": "M_UNKNOWN", "error": "The retry timing does not need to be reset "
                                                                       "for this destination."})
        self._answer(200, {})


class ShRemote:
    """The SSH transport, faked: commands run here with sh."""

    def __init__(self, host: str, data: dict):
        self.host = host

    def output(self, command: str) -> str:
        result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
        if result.returncode:
            raise BackupError(f"host {self.host}: failed: {result.stderr[-300:]}")
        return result.stdout.strip()

    def close(self):
        pass


def destination(name, **fields):
    return {"destination": name, "failure_ts": None, "retry_last_ts": 0, "retry_interval": 0,
            "last_successful_stream_ordering": None, **fields}


@pytest.fixture
def synapse(tmp_path, monkeypatch):
    """A fake admin API on a free loopback port, the token file it expects, and the inventory settings."""
    FakeSynapse.destinations, FakeSynapse.rooms, FakeSynapse.requests, FakeSynapse.metrics_page = [], {}, [], ""
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeSynapse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(admin, "TOKEN_ROOT", str(tmp_path))
    (tmp_path / "venv" / "bin").mkdir(parents=True)  # the host's venv Python: this one
    (tmp_path / "venv" / "bin" / "python").symlink_to(sys.executable)
    monkeypatch.setattr(paths, "VENV", str(tmp_path / "venv"))
    (tmp_path / "a.test.token").write_text(TOKEN + "\n")
    port = server.server_address[1]
    settings = {"h1": host_settings("h1", {"homeservers": [{"server_name": "a.test", "port": port},
                                                           {"server_name": "down.test", "port": free_port()}]})}
    yield SimpleNamespace(port=port, loaded=(settings, {"h1": {}}))
    server.shutdown()


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def report(name, *hints, ok=False):
    """A `federate check` report as far as the hints need it."""
    return {"ServerName": name, "FederationOK": ok, "Hints": list(hints)}


def hint(name, level, problem):
    return {"check": "connection", "level": level, "name": name, "problem": problem, "fix": f"fix {name}"}


def gather(synapse, **options):
    check = options.pop("check", lambda name, settings: report(name, hint("port-closed", "error", f"{name}: refused")))
    return dest.gather("inv.py", connect=ShRemote, check=check, loaded=synapse.loaded, **options)


# --- status rules --------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, rooms, status", [
    ({}, 2, "working"),
    ({"last_successful_stream_ordering": 7}, 1, "working"),
    ({}, 0, "inactive"),
    ({"failure_ts": NOW, "retry_last_ts": NOW, "retry_interval": 600_000, "last_successful_stream_ordering": 7},
     1, "failing"),
    ({"failure_ts": NOW, "retry_last_ts": NOW, "retry_interval": 600_000}, 0, "never-worked"),
    ({"failure_ts": NOW, "retry_last_ts": NOW, "retry_interval": 600_000, "last_successful_stream_ordering": 3},
     0, "failing"),  # failing wins over inactive: Synapse still tries
])
def test_status_rules(fields, rooms, status):
    assert dest.status_of({**destination("b.test", **fields), "rooms": rooms}) == status


def test_next_attempt_is_last_try_plus_interval():
    assert dest.next_attempt_ts(destination("b.test", retry_last_ts=NOW, retry_interval=600_000)) == NOW + 600_000
    assert dest.next_attempt_ts(destination("b.test")) is None


# --- the host-side script and the pagination ------------------------------------------------------

def test_hundreds_of_destinations_are_paged_through(synapse):
    FakeSynapse.destinations = [destination(f"d{i:03}.test") for i in range(250)]
    FakeSynapse.rooms = {"d007.test": [f"!r{i}:a.test" for i in range(130)]}
    [result, down] = gather(synapse, server=None, with_room_ids=True)
    names = [d["destination"] for d in result["destinations"]]
    assert names == [f"d{i:03}.test" for i in range(250)]
    seven = result["destinations"][7]
    assert seven["rooms"] == 130 and seven["room_ids"] == [f"!r{i}:a.test" for i in range(130)]
    assert [p for p in FakeSynapse.requests if p.startswith(API + "?")] == [
        f"{API}?from=0&limit=100", f"{API}?from=100&limit=100", f"{API}?from=200&limit=100"]
    assert down["error"].startswith(f"down.test on h1: no admin token ({admin.TOKEN_ROOT}/down.test.token: ")


def test_room_counts_without_ids_take_one_small_page(synapse):
    FakeSynapse.destinations = [destination("b.test")]
    FakeSynapse.rooms = {"b.test": ["!x:a.test", "!y:a.test"]}
    [result, _] = gather(synapse)
    assert result["destinations"] == [{"destination": "b.test", "status": "working", "failure_ts": None,
                                       "retry_last_ts": 0, "retry_interval": 0,
                                       "last_successful_stream_ordering": None, "next_attempt_ts": None, "rooms": 2}]
    assert FakeSynapse.requests[-1] == f"{API}/b.test/rooms?from=0&limit=1"


def test_failing_destinations_are_checked_once_and_failing_filters(synapse):
    FakeSynapse.destinations = [destination("b.test", failure_ts=NOW - 120_000, retry_last_ts=NOW - 60_000,
                                            retry_interval=600_000, last_successful_stream_ordering=5),
                                destination("c.test")]
    FakeSynapse.rooms = {"b.test": ["!x:a.test"], "c.test": ["!x:a.test"]}
    asked = []
    [result] = gather(synapse, server="a.test", failing_only=True,
                      check=lambda name, settings: asked.append(name) or report(name, hint("dns", "error", "m")))
    assert asked == ["b.test"]
    [failing] = result["destinations"]
    assert (failing["status"], failing["next_attempt_ts"]) == ("failing", NOW + 540_000)
    assert failing["hints"] == [{"id": "dns", "level": "error", "message": "m", "fix": "fix dns"}]
    assert dest.exit_status([result]) == 1


def test_hints_leave_out_info_and_the_homeserver_s_own_private_ranges():
    hs = host_settings("h1", {"homeservers": [{"server_name": "a.test", "ip_range_whitelist": ["10.1.0.0/16"]}]}
                       ).homeservers[0]
    found = report("b.test", hint("port-closed", "error", "10.1.2.3:8448: refused"),
                   hint("private-address", "warning", "10.1.2.3:8448 is a private or reserved address"),
                   hint("private-address", "warning", "192.168.1.1:8448 is a private or reserved address"),
                   hint("join-401", "info", "joins fail"))
    assert [(h["id"], h["message"]) for h in dest.hints_from(found, hs)] == [
        ("port-closed", "10.1.2.3:8448: refused"),
        ("private-address", "192.168.1.1:8448 is a private or reserved address")]
    [now_ok] = dest.hints_from(report("b.test", ok=True), hs)
    assert now_ok["id"] == "reachable-now" and "--reset b.test" in now_ok["fix"]


def test_a_homeserver_that_is_down_is_one_line_and_the_others_are_reported(synapse, tmp_path):
    (tmp_path / "down.test.token").write_text(TOKEN)
    FakeSynapse.destinations = [destination("b.test")]
    up, down = gather(synapse)
    assert up["destinations"] and not up.get("error")
    assert down["error"].startswith("down.test on h1: Synapse is down: 127.0.0.1:") and "refused" in down["error"]
    text = dest.format_table([up, down], NOW)
    assert text.splitlines()[-1] == f"down.test on h1: cannot list destinations: {down['error']}"
    assert dest.exit_status([up, down]) == 1
    assert dest.exit_status([up]) == 0


def test_a_refused_token_says_how_to_make_a_new_one(synapse, tmp_path):
    (tmp_path / "a.test.token").write_text("stale")
    [result] = gather(synapse, server="a.test")
    assert result["error"] == (f"a.test on h1: the admin token is refused (M_UNKNOWN_TOKEN): remove "
                               f"{tmp_path}/a.test.token on the host and run the deploy to make a new one")


# --- reset ------------------------------------------------------------------------------------------

def test_reset(synapse):
    FakeSynapse.destinations = [destination("b.test", failure_ts=NOW, retry_last_ts=NOW, retry_interval=600_000),
                                destination("c.test")]
    reset = lambda name: dest.reset("inv.py", "a.test", name, connect=ShRemote, loaded=synapse.loaded)  # noqa: E731
    assert reset("b.test") == "a.test: retry timer of b.test reset: queued events go out now"
    assert FakeSynapse.requests[-1] == f"{API}/b.test/reset_connection"
    assert reset("c.test") == "a.test: c.test is not backing off: nothing to reset"
    with pytest.raises(dest.DestinationsError, match=r"^--reset nope.test: a.test does not know this destination "):
        reset("nope.test")


# --- for people and for scripts ---------------------------------------------------------------------

@pytest.mark.parametrize("ms, text", [(None, "-"), (NOW - 180_000, "3 min ago"), (NOW + 420_000, "in 7 min"),
                                      (NOW - 5_000, "5 s ago"), (NOW + 3 * 3600_000, "in 3 h"),
                                      (NOW - 9 * 86400_000, "9 days ago")])
def test_relative_times(ms, text):
    assert dest.relative(ms, NOW) == text


def test_table():
    results = [{"server_name": "a.test", "host": "h1", "destinations": [
        {"destination": "b.test", "status": "failing", "failure_ts": NOW - 180_000, "retry_last_ts": NOW - 60_000,
         "retry_interval": 480_000, "last_successful_stream_ordering": 9, "next_attempt_ts": NOW + 420_000,
         "rooms": 1, "room_ids": ["!r:a.test"],
         "hints": [{"id": "port-closed", "level": "error", "message": "b.test:8448: refused", "fix": "open 8448"}]},
        {"destination": "internal.a.test", "status": "working", "failure_ts": None, "retry_last_ts": 0,
         "retry_interval": 0, "last_successful_stream_ordering": 3, "next_attempt_ts": None, "rooms": 2,
         "room_ids": ["!r:a.test", "!s:a.test"]}]}]
    assert dest.format_table(results, NOW).splitlines() == [
        "a.test on h1: 2 destinations, 1 failing",
        "  DESTINATION      STATUS   ROOMS  FAILING SINCE  LAST TRY   NEXT TRY",
        "  b.test           failing  1      3 min ago      1 min ago  in 7 min",
        "      room !r:a.test",
        "      [ERROR] port-closed: b.test:8448: refused",
        "        fix: open 8448",
        "  internal.a.test  working  2      -              -          -",
        "      room !r:a.test",
        "      room !s:a.test",
    ]


def test_json_shape_and_no_token_in_output(synapse, monkeypatch, capsys):
    FakeSynapse.destinations = [destination("b.test", failure_ts=NOW, retry_last_ts=NOW, retry_interval=1000)]
    monkeypatch.setattr(dest, "inventory_hosts", lambda inventory: synapse.loaded)
    monkeypatch.setattr(dest, "Remote", ShRemote)
    monkeypatch.setattr(dest, "checked", lambda name, settings: report(name))
    assert main(["destinations", "inv.py", "--server", "a.test", "--json"]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out) == [{"server_name": "a.test", "host": "h1", "destinations": [
        {"destination": "b.test", "status": "never-worked", "failure_ts": NOW, "retry_last_ts": NOW,
         "retry_interval": 1000, "last_successful_stream_ordering": None, "next_attempt_ts": NOW + 1000,
         "rooms": 0, "hints": []}]}]
    assert TOKEN not in out.out + out.err


# --- bad input: one line, no traceback --------------------------------------------------------------

@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "inventory.py"
    path.write_text("servers = [('hs1.invalid', {'homeservers': [{'server_name': 'a.test'}]})]\n")
    return str(path)


@pytest.mark.parametrize("args, message", [
    (["--server", "nope.test"], "--server nope.test: no such homeserver in {inventory} (it has: a.test)"),
    (["--reset", "b.test"], "--reset: needs --server SERVER_NAME (the homeserver whose retry timer is reset)"),
    (["--server", "a.test", "--reset", "b.test", "--failing"], "--reset: not with --failing or --rooms (it lists "
                                                               "nothing)"),
    (["--server", "nope.test", "--reset", "b.test"], "--server nope.test: no such homeserver in {inventory} "
                                                     "(it has: a.test)"),
])
def test_argument_errors(inventory, capsys, args, message):
    assert main(["destinations", inventory, *args]) == 2
    err = capsys.readouterr().err
    assert err == f"federate: {message.format(inventory=inventory)}\n"


def test_a_check_that_cannot_run_is_a_hint(monkeypatch):
    def broken(name, **options):
        raise ValueError("bad DNS server address")
    monkeypatch.setattr(dest, "check_server", broken)
    s = host_settings("h1", {"homeservers": [{"server_name": "a.test"}]})
    [entry] = dest.hints_from(dest.checked("b.test", s), s.homeservers[0])
    assert (entry["id"], entry["message"]) == ("check-failed", "federate check: bad DNS server address")


# --- metrics: the federation sender's queue ----------------------------------------------------------

METRICS_PAGE = """# HELP synapse_federation_transaction_queue_pending_pdus
# TYPE synapse_federation_transaction_queue_pending_pdus gauge
synapse_federation_transaction_queue_pending_pdus{server_name="a.test"} 3.0
synapse_federation_transaction_queue_pending_pdus_other 7.0
synapse_federation_transaction_queue_pending_edus 2.0
"""


def with_metrics(synapse):
    """The inventory of the fixture with a.test's metrics listener on the fake's own port."""
    settings, data = synapse.loaded
    s = settings["h1"]
    hs = replace(s.homeservers[0], metrics=Metrics("127.0.0.1", synapse.port))
    return {"h1": replace(s, homeservers=(hs, *s.homeservers[1:]))}, data


def test_with_metrics_on_the_queue_is_read_on_the_host(synapse):
    FakeSynapse.destinations, FakeSynapse.metrics_page = [destination("b.test")], METRICS_PAGE
    synapse.loaded = with_metrics(synapse)
    [result] = gather(synapse, server="a.test")
    assert (result["pending_pdus"], result["pending_edus"]) == (3, 2) and "metrics_error" not in result
    assert dest.format_table([result], NOW).splitlines()[0] == \
        "a.test on h1: 1 destination, none failing; queued: 3 PDUs, 2 EDUs"
    FakeSynapse.metrics_page = "synapse_federation_transaction_queue_pending_pdus 1.0\n"  # no EDU gauge here
    [result] = gather(synapse, server="a.test")
    assert result["pending_pdus"] is None and result["metrics_error"].endswith(
        "/_synapse/metrics has no synapse_federation_transaction_queue_pending_edus")
    assert "; queue unknown (" in dest.format_table([result], NOW).splitlines()[0]


def test_without_metrics_no_queue_fields(synapse):
    FakeSynapse.destinations = [destination("b.test")]
    [result] = gather(synapse, server="a.test")
    assert "pending_pdus" not in result and "queued" not in dest.format_table([result], NOW)


# --- hints from the homeserver's own host ------------------------------------------------------------

def resolved_report(ok=True):
    """A report whose check resolved b.test to 10.0.0.5 and connected there on 8448 (valid TLS)."""
    connection = {"TLSName": "b.test", "Checks": {"ValidCertificates": True}}
    return {"ServerName": "b.test", "FederationOK": ok, "Hints": [],
            "WellKnownResult": {"m.server": ""},
            "DNSResult": {"Hosts": {"b.test": {"CName": "", "Addrs": ["10.0.0.5"], "Error": None}},
                          "Addrs": ["10.0.0.5:8448"]},
            "ConnectionReports": {"10.0.0.5:8448": connection} if ok else {},
            "ConnectionErrors": {} if ok else {"10.0.0.5:8448": {"Message": "refused", "Kind": "refused"}}}


def probed(resolve_error=None, addresses=(), connect_error=None, tls_error=None):
    return [{"name": "b.test", "port": 8448, "tls_name": "b.test", "resolve_error": resolve_error,
             "addresses": [{"address": a, "connect_error": connect_error, "tls_error": tls_error} for a in addresses]}]


def test_probe_targets_are_the_names_and_ports_the_check_resolved():
    assert host_probe_targets(resolved_report()) == [["b.test", 8448, "b.test"]]
    delegated = {**resolved_report(), "WellKnownResult": {"m.server": "matrix.b.test:443"},
                 "DNSResult": {"Hosts": {"matrix.b.test": {"Addrs": ["10.0.0.6"]}}, "Addrs": ["10.0.0.6:443"]}}
    assert host_probe_targets(delegated) == [["matrix.b.test", 443, "matrix.b.test"]]
    assert host_probe_targets(report("b.test")) == []  # nothing resolved: nothing to try again


@pytest.mark.parametrize("probe, ids", [
    (probed(addresses=["10.0.0.5"]), ["reachable-now"]),
    (probed(resolve_error="gaierror: [Errno -2] Name or service not known"), ["host-dns"]),
    (probed(addresses=["10.0.0.5"], connect_error="ConnectionRefusedError: [Errno 111] Connection refused"),
     ["host-egress"]),
    (probed(addresses=["10.0.0.5"], tls_error="SSLCertVerificationError: unable to get local issuer certificate"),
     ["host-certificate"]),
    (probed(addresses=["10.9.9.9"], connect_error="TimeoutError: timed out"), ["host-egress", "host-dns"]),
])
def test_host_hints_where_the_controller_got_through(probe, ids):
    hs = host_settings("h1", {"homeservers": [{"server_name": "a.test"}]}).homeservers[0]
    found = dest.hints_from(resolved_report(), hs, probe, "hs1")
    assert [h["id"] for h in found] == ids
    for h in found:
        assert h["message"] and h["fix"] and (h["id"] == "reachable-now" or h["message"].startswith("hs1 "))
    if ids == ["reachable-now"]:
        assert "(and so does the homeserver's host)" in found[0]["message"]


def test_no_host_hint_where_the_controller_fails_too():
    hs = host_settings("h1", {"homeservers": [{"server_name": "a.test"}]}).homeservers[0]
    probe = probed(addresses=["10.0.0.5"], connect_error="ConnectionRefusedError: [Errno 111] Connection refused")
    assert [h["id"] for h in dest.hints_from(resolved_report(ok=False), hs, probe, "hs1")] == []


def test_one_probe_per_homeserver_for_all_its_failing_destinations(synapse):
    FakeSynapse.destinations = [destination(n, failure_ts=NOW, retry_last_ts=NOW, retry_interval=600_000,
                                            last_successful_stream_ordering=1) for n in ("b.test", "c.test")]
    calls = []

    def probe(remote, targets):
        calls.append(targets)
        return probed(addresses=["10.0.0.5"], connect_error="ConnectionRefusedError: refused")

    [result] = gather(synapse, server="a.test", check=lambda name, s: resolved_report(), probe=probe)
    assert calls == [[["b.test", 8448, "b.test"]]]  # the same name and port once
    assert [[h["id"] for h in d["hints"]] for d in result["destinations"]] == [["host-egress"], ["host-egress"]]


def test_the_probe_script_itself(tmp_path):
    """egress_probe.py as the host runs it: a closed port, and a port that answers without TLS."""
    import socket

    from federate.deploy.hostscripts import source

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        plain, closed = listener.getsockname()[1], free_port()
        script = tmp_path / "probe.py"
        script.write_text(source("egress_probe.py"))

        def answer_and_close():
            connection, _ = listener.accept()
            connection.sendall(b"HTTP/1.0 400 no TLS here\r\n\r\n")
            connection.close()
        threading.Thread(target=answer_and_close, daemon=True).start()
        out = subprocess.run([sys.executable, str(script), json.dumps([["localhost", plain, "b.test"],
                                                                        ["127.0.0.1", closed, "b.test"]])],
                             capture_output=True, text=True, timeout=60)
    answering, refusing = json.loads(out.stdout)
    assert answering["resolve_error"] is None and "127.0.0.1" in [a["address"] for a in answering["addresses"]]
    first = next(a for a in answering["addresses"] if a["address"] == "127.0.0.1")
    assert first["connect_error"] is None and first["tls_error"]
    assert refusing["addresses"][0]["connect_error"].startswith("ConnectionRefusedError")


def test_with_sender_workers_the_queue_is_the_senders_summed(synapse):
    """The queue lives in the federation sender workers: each one's metrics page is read (in the same
    host call) and added up; the main process's listener is not asked."""
    FakeSynapse.destinations, FakeSynapse.metrics_page = [destination("b.test")], METRICS_PAGE
    settings, data = synapse.loaded
    s = settings["h1"]
    senders = Workers("federation", federation_senders=2, metrics_ports=(synapse.port, synapse.port))
    hs = replace(s.homeservers[0], metrics=Metrics("127.0.0.1", free_port()), workers=senders)
    synapse.loaded = {"h1": replace(s, homeservers=(hs, *s.homeservers[1:]))}, data
    [result] = gather(synapse, server="a.test")
    assert (result["pending_pdus"], result["pending_edus"]) == (6, 4) and "metrics_error" not in result, result
    assert dest.list_args(hs, False) == ["list", *[f"metrics=http://127.0.0.1:{synapse.port}/_synapse/metrics"] * 2]
