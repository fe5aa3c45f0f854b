"""One lab for the whole lab test session: booted, deployed once with the real CLI, torn down
even when tests fail. Everything is observed from outside: TLS, HTTP, ports, SSH."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from cryptography import x509

from federate.lab import Lab, pki
from federate.checker.http import https_get
from federate.inventory import load_settings
from federate.lab.runner import REPO_ROOT, assert_converged, json_document, run_deploy, run_deployed, write_inventory


class LabSession:
    def __init__(self, lab: Lab, info: dict):
        self.lab, self.info = lab, info
        self.timings: dict[str, float] = {}

    @property
    def inventory(self) -> str:
        return self.info["inventory"]

    def journal(self, host: str, unit_pattern: str) -> str:
        """The messages of the units matching `unit_pattern` (a systemd glob) on `host`."""
        return self.ssh(host, f"journalctl -q --no-pager -o cat -u '{unit_pattern}'", check=False).stdout

    def assert_restarted_after_kill(self, host: str, unit: str, seconds: float = 90) -> None:
        """SIGKILL to `unit`'s main process; systemd must bring it back with a new one within `seconds`."""
        before = self.ssh(host, f"systemctl show -p MainPID --value {unit}").stdout.strip()
        self.ssh(host, f"systemctl kill -s KILL {unit}")
        deadline, state = time.monotonic() + seconds, []
        while time.monotonic() < deadline:
            state = self.ssh(host, f"systemctl is-active {unit}; systemctl show -p MainPID --value {unit}",
                             check=False).stdout.split()
            if state[0] == "active" and state[-1] not in (before, "0"):
                return
            time.sleep(2)
        raise AssertionError(f"{unit} was not restarted: {state}")

    def runs_workers(self, host: str) -> bool:
        """Whether a homeserver of `host` runs Synapse workers (its venv then holds the lock with Redis)."""
        return any(hs.workers.enabled for hs in load_settings(self.inventory)[host].homeservers)

    def address(self, host: str) -> str:
        return self.info["hosts"][host]["address"]

    def ssh(self, host: str, command: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["ssh", "-i", self.info["ssh_key"], "-o", f"UserKnownHostsFile={self.info['known_hosts']}",
             "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
             f"root@{self.address(host)}", command],
            text=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"ssh {host} {command!r} failed: {result.stderr}{result.stdout}")
        return result

    def noop_rerun(self) -> subprocess.CompletedProcess:
        """A `--json` re-run, timed as 'noop_deploy', that must change nothing on any host; then a `--dry` plan."""
        start = time.monotonic()
        result = assert_converged(self.inventory)
        self.timings["noop_deploy"] = time.monotonic() - start
        # The --dry plan agrees: no operation would change anything (restarts and reloads stay
        # "conditional": their condition is only known when the run executes).
        dry = run_deploy(self.inventory, "--dry", "--json")
        assert dry.returncode == 0, dry.stderr[-3000:]
        plan = json_document(dry)["plan"]
        assert not [(op["name"], op["hosts_with_change"]) for op in plan if op["hosts_with_change"]]
        return result


@contextmanager
def own_lab(prefix: str, topology: dict | None = None, release: str | None = None) -> Iterator[LabSession]:
    """A suite's own lab, named by its letter and this pytest process (so two sessions never share
    one), taken down whatever happens, a failed start included. None is the demo topology."""
    lab = Lab(f"{prefix}{os.getpid() % 100000}", root=REPO_ROOT)
    try:
        start = time.monotonic()
        session = LabSession(lab, lab.up(topology, release=release))
        session.timings["lab_up"] = time.monotonic() - start
        yield session
    finally:
        lab.down()


# Every privileged port, the Synapse listener range and common service ports (caddy's admin 2019).
SCANNED_PORTS = sorted(set(range(1, 1025)) | set(range(8000, 8100))
                       | {2019, 3000, 5432, 6379, 8448, 9000, 9090, 15000})


def open_ports(address: str, ports=SCANNED_PORTS) -> set[int]:
    """The TCP ports of `ports` that accept a connection from the controller."""
    def probe(port):
        with socket.socket() as sock:
            sock.settimeout(1.0)
            return port if sock.connect_ex((address, port)) == 0 else None
    with ThreadPoolExecutor(max_workers=64) as pool:
        return {p for p in pool.map(probe, ports) if p}


def reachable_from(session: "LabSession", host: str, address: str, port: int) -> bool:
    """Whether lab host `host` can open a TCP connection to address:port (5 s at most)."""
    probe = session.ssh(host, f"timeout 5 bash -c 'exec 3<>/dev/tcp/{address}/{port}' && echo open || echo closed")
    return probe.stdout.strip() == "open"


FEDERATE = str(Path(sys.executable).parent / "federate")


def federate(*args: str) -> subprocess.CompletedProcess:
    """The `federate` command as a user runs it, from the repository root."""
    return subprocess.run([FEDERATE, *args], cwd=REPO_ROOT, text=True, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=600)


@contextmanager
def inventory_deployed(session: "LabSession", path: Path, *mutations) -> Iterator[str]:
    """A copy of the session's inventory with `mutations` applied (write_inventory), deployed; the
    session's own inventory deployed again at the end, whatever happens, so later suites find the lab
    as it was."""
    inventory = write_inventory(path, session.inventory, *mutations)
    try:
        start = time.monotonic()
        run_deployed(inventory)
        print(f"deploy of {path.name}: {time.monotonic() - start:.1f}s")
        yield inventory
    finally:
        back = run_deploy(session.inventory)
        assert back.returncode == 0, back.stderr[-4000:]


def issue_certificate(lab: Lab, directory: Path, names: list[str]) -> tuple[dict[str, str], int]:
    """A certificate for `names` from the lab CA, written on the controller as
    directory/<first name>.crt and .key (replaced when called again): ({cert, key}, serial)."""
    cert, key = directory / f"{names[0]}.crt", directory / f"{names[0]}.key"
    pki.issue_server_cert(lab.paths.file("lab_ca.pem"), lab.paths.file("lab_ca.key"), names, [], cert, key)
    return {"cert": str(cert), "key": str(key)}, x509.load_pem_x509_certificate(cert.read_bytes()).serial_number


def with_provided_certificate(inventory: str, directory: Path, host: str, files: dict[str, str],
                              cert_name: str) -> str:
    """A copy of `inventory` in which `host` uses `files` as its provided certificate."""
    def provided_tls(hosts):
        dict(hosts)[host]["tls"] = {"mode": "provided", "certificates": {cert_name: files}}
    return write_inventory(directory / "inventory.py", inventory, provided_tls)


def served_serial(info: dict, name: str, port: int) -> int:
    """The serial number of the certificate `name`:`port` presents (verified against the lab CAs)."""
    response = https_get(name, port, "/_matrix/federation/v1/version", ca_file=info["ca_file"], dns_server=info["dns"])
    assert response.status == 200, (name, port, response.status)
    return x509.load_der_x509_certificate(response.certificate_chain[0]).serial_number


def _exit_on_sigterm(signum, frame):
    # A CI time-out sends SIGTERM: stop the session as ^C does (SystemExit would only fail the
    # current test and go on), and every lab is still torn down by its fixture.
    raise KeyboardInterrupt(f"terminated by signal {signum}")


def pytest_configure(config):
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


@pytest.fixture(scope="session")
def lab():
    with own_lab("t") as session:  # the demo topology: 2 hosts, 3 homeservers, users
        yield session


@pytest.fixture(scope="session")
def deployed(lab):
    """The first (cold) deploy of the lab inventory."""
    start = time.monotonic()
    run_deployed(lab.inventory)
    lab.timings["cold_deploy"] = time.monotonic() - start
    return lab



# --- the caddy + nftables lab (test_variants, then test_variants_restore) ---------------------------

VARIANT = {"proxy": "caddy", "firewall": "nftables"}
TOPOLOGY = {"hosts": {
    "hs1": {"release": "bookworm",
            "homeservers": [{"server_name": "alpha.test", "public_host": "matrix.alpha.test",
                             "users": [{"localpart": "alice", "admin": True}]}],
            "host_data": VARIANT},
    "hs2": {"release": "trixie",
            # bob seeds history before test_variants_restore backs it up: Synapse's rate limits for
            # messages (0.2/s after a burst of 10) and new rooms (about 1/min) would make that take minutes
            "homeservers": [{"server_name": "beta.test", "users": [{"localpart": "bob"}],
                             "synapse_extra": {"rc_message": {"per_second": 100, "burst_count": 1000},
                                               "rc_room_creation": {"per_second": 100, "burst_count": 1000}}},
                            {"server_name": "internal.beta.test", "profile": "internal",
                             "federation_whitelist": ["beta.test"], "users": [{"localpart": "dave"}]}],
            "host_data": VARIANT},
    # a spare Debian 13 host, out of the inventory until a homeserver moves there (test_variants_restore)
    "hs3": {"release": "trixie", "homeservers": []},
}}


PROVIDED_NAMES = ["alpha.test", "matrix.alpha.test"]  # hs1's own certificate; hs2 uses caddy's ACME


@pytest.fixture(scope="session")
def variant_lab(tmp_path_factory):
    directory = tmp_path_factory.mktemp("provided")
    with own_lab("c", TOPOLOGY) as session:
        files, session.info["provided_serial"] = issue_certificate(session.lab, directory, PROVIDED_NAMES)
        session.info["inventory"] = with_provided_certificate(session.inventory, directory, "hs1", files,
                                                              "alpha.test")
        session.info["inventory"] = write_inventory(directory / "inventory.py", session.inventory,
                                                    internal_clients_from(session), without_spare)
        start = time.monotonic()
        run_deployed(session.inventory)
        session.timings["cold_deploy"] = time.monotonic() - start
        yield session


def without_spare(hosts):
    hosts[:] = [(name, data) for name, data in hosts if name != "hs3"]


def internal_clients_from(session):
    """internal.beta.test's client API only for the controller (the lab's bridge) and its own host."""
    def limit(hosts):
        dict(hosts)["hs2"]["homeservers"][1]["client_allow_ranges"] = [f"{session.info['dns']}/32",
                                                                       f"{session.address('hs2')}/32"]
    return limit


# --- TLS and HTTP hardening, seen from outside (issue 11) ------------------------------------------

HSTS_MIN_AGE = 2 * 365 * 24 * 3600


def tls_scan(address: str, name: str, ports=(443, 8448)) -> str:
    """nmap's ssl-enum-ciphers report for `name` (SNI) at address:ports."""
    result = subprocess.run(["nmap", "-Pn", "--script", "ssl-enum-ciphers", "-p", ",".join(map(str, ports)),
                             "--script-args", f"tls.servername={name}", address],
                            text=True, capture_output=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return result.stdout


def assert_tls_grade_a(report: str, ports=(443, 8448)):
    """Every scanned port: grade A, TLS 1.2 and 1.3 only, ECDHE AEAD suites only (no CBC, no RSA kex)."""
    for port in ports:
        section = report.split(f"{port}/tcp")[1].split("/tcp")[0]
        assert "least strength: A" in section, section
        assert "TLSv1.2:" in section and "TLSv1.3:" in section, section
        assert not any(old in section for old in ("TLSv1.0:", "TLSv1.1:", "SSLv3")), section
        suites = [line.split()[1] for line in section.splitlines() if "_WITH_" in line]
        assert suites and all(("_GCM_" in s or "CHACHA20" in s) and "CBC" not in s for s in suites), suites
        assert all(s.startswith(("TLS_ECDHE_", "TLS_AKE_")) for s in suites), suites


def assert_no_handshake_for_unknown_names(address: str, ports=(443, 8448)):
    """A TLS name the host does not serve gets no handshake, so no certificate that names the others."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    for port in ports:
        with socket.create_connection((address, port), timeout=5) as raw:
            with pytest.raises(ssl.SSLError):
                context.wrap_socket(raw, server_hostname="unknown.test").close()


def assert_hsts_and_no_version(reply_443, reply_8448):
    hsts = reply_443.headers.get("strict-transport-security", "")
    assert int(hsts.split("max-age=")[1].split(";")[0]) >= HSTS_MIN_AGE, reply_443.headers
    assert "strict-transport-security" not in reply_8448.headers  # HSTS is for browsers: 443 only
    for reply in (reply_443, reply_8448):
        assert not any(c.isdigit() for c in reply.headers.get("server", "")), reply.headers
        assert b"nginx/" not in reply.body and b"Caddy/" not in reply.body


def remote_status(lab, host: str, url: str) -> tuple[int, str]:
    """HTTP status and body of a GET from inside lab host `host` (its own address as the source)."""
    out = lab.ssh(host, f"curl -s --path-as-is -o /tmp/federate-probe -w '%{{http_code}}' '{url}'; echo; "
                        "cat /tmp/federate-probe").stdout
    status, _, body = out.partition("\n")
    return int(status), body
