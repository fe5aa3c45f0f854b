"""Issue 11, SSH: new SSH connections are rate limited per source address, by ufw's `limit` (hs1,
Debian 12, nginx) and by an nftables meter (hs2, Debian 13, caddy); then the other way round (ufw
on Debian 13, nftables on Debian 12). The lab's controller is a trusted range and never limited; a
lab host is not, and is refused after 5 connections in a row. The deploy's own session is never
cut, even when the controller is not trusted and is refused new connections during the run.
Moving a host deployed without the limit (`allow 22/tcp`, as before) to it keeps SSH open, and
the firewall's SSH rules repair when they drift."""

from __future__ import annotations

import re
import shlex
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest

from conftest import LabSession, own_lab
from federate.lab.runner import (PYINFRA, REPO_ROOT, assert_converged, changed_operations, run_deploy, run_deployed,
                                 write_inventory)

pytestmark = pytest.mark.lab

TOPOLOGY = {"hosts": {
    "hs1": {"release": "bookworm", "homeservers": [{"server_name": "alpha.test"}],
            "host_data": {"database": "sqlite"}},  # nginx and ufw: the defaults
    "hs2": {"release": "trixie", "homeservers": [{"server_name": "beta.test"}],
            "host_data": {"proxy": "caddy", "firewall": "nftables", "database": "sqlite"}},
}}
OTHER = {"hs1": "hs2", "hs2": "hs1"}
LIMIT = 5  # new connections a source gets in a row (ufw refuses the 6th within 30 s)


def _with_ssh(lab: LabSession, path, ssh: dict) -> str:
    """A copy of the lab inventory with every host's `ssh` setting replaced."""
    def mutate(hosts):
        for _, data in hosts:
            data["ssh"] = ssh
    return write_inventory(path, lab.inventory, mutate)


@pytest.fixture(scope="module")
def limit_lab(tmp_path_factory):
    """Deployed first without the limit: exactly the rules federate wrote before it had one."""
    directory = tmp_path_factory.mktemp("ssh-limit")
    with own_lab("l", TOPOLOGY) as session:
        session.info["unlimited"] = _with_ssh(session, directory / "unlimited.py", {"rate_limit": False})
        session.info["untrusted"] = _with_ssh(session, directory / "untrusted.py", {"trusted_ranges": []})
        run_deployed(session.info["unlimited"])
        yield session


# Between lab hosts the firewall is observed at the TCP level: a connection it lets through is
# accepted by the kernel whatever sshd then does, one it refuses fails to connect. The controller
# logs in for real instead: OpenSSH 10 (Debian 13) shuts out a source that keeps connecting without
# logging in (PerSourcePenalties), which would lock the controller out of the lab's hosts.

def probe_from(lab: LabSession, host: str, target: str, count: int = 10) -> str:
    """`count` new TCP connections in a row from lab host `host` to `target`'s SSH port: '+' for
    one accepted, '-' for one refused."""
    attempt = f"exec 3<>/dev/tcp/{lab.address(target)}/22"
    loop = (f"out=; for i in $(seq {count}); do if timeout 3 bash -c {shlex.quote(attempt)} 2>/dev/null; "
            "then out=$out+; else out=$out-; fi; done; echo $out")
    return lab.ssh(host, loop).stdout.strip()


def login(lab: LabSession, host: str) -> str:
    """One SSH login from the controller on a new connection: 'ok', 'refused' or what went wrong."""
    result = lab.ssh(host, "true", check=False)
    if result.returncode == 0:
        return "ok"
    return "refused" if "Connection refused" in result.stderr else result.stderr.strip()


def logins(lab: LabSession, host: str, count: int) -> list[str]:
    """`count` SSH logins in a row from the controller, each a new connection."""
    return [login(lab, host) for _ in range(count)]


class Prober:
    """While running: SSH logins from the controller to each host in turn, a few a second,
    results kept per host."""

    def __init__(self, lab: LabSession, hosts=("hs1", "hs2")):
        self.lab, self.results = lab, {host: [] for host in hosts}
        self.stop, self.thread = threading.Event(), threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            for host, results in self.results.items():
                results.append(login(self.lab, host))
            self.stop.wait(0.1)

    def start(self):
        self.thread.start()

    def reach(self, count: int, timeout: float = 120) -> None:
        """Go on until every host has had `count` logins (a no-op deploy may end sooner)."""
        deadline = time.monotonic() + timeout
        while any(len(results) < count for results in self.results.values()) and time.monotonic() < deadline:
            time.sleep(0.2)

    def finish(self):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


def open_session(lab: LabSession, host: str) -> subprocess.Popen:
    """An SSH session that stays open (and prints a tick every half second) until terminated."""
    return subprocess.Popen(
        ["ssh", "-i", lab.info["ssh_key"], "-o", f"UserKnownHostsFile={lab.info['known_hosts']}",
         "-o", "BatchMode=yes", "-o", "ServerAliveInterval=5", f"root@{lab.address(host)}",
         "while sleep 0.5; do echo tick; done"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)


def assert_alive(session: subprocess.Popen):
    assert session.poll() is None, "the open SSH session was cut"
    assert session.stdout.readline().strip() == "tick"


@contextmanager
def watched(lab: LabSession, probing: bool = True):
    """Around a deploy: an SSH session open to each host, which must survive, and a Prober
    (started now, or by the caller)."""
    sessions = [open_session(lab, host) for host in ("hs1", "hs2")]
    prober = Prober(lab)
    if probing:
        prober.start()
    try:
        yield prober
        for session in sessions:
            assert_alive(session)
    finally:
        prober.finish()
        for session in sessions:
            session.terminate()
            session.wait(timeout=10)


def ufw_rules(lab: LabSession, host: str) -> list[str]:
    return [line[len("ufw "):] for line in lab.ssh(host, "ufw show added").stdout.splitlines()
            if line.startswith("ufw ")]


def nft_table(lab: LabSession, host: str) -> str:
    return lab.ssh(host, "nft list table inet federate").stdout


def test_without_the_limit_ssh_is_allowed_as_before(limit_lab):
    assert ufw_rules(limit_lab, "hs1") == ["allow 22/tcp", "allow 80/tcp", "allow 443/tcp", "allow 8448/tcp"]
    table = nft_table(limit_lab, "hs2")
    assert "tcp dport 22 accept" in table and "ssh_meter" not in table and "saddr" not in table
    assert probe_from(limit_lab, "hs1", "hs2") == "+" * 10
    assert probe_from(limit_lab, "hs2", "hs1") == "+" * 10


def test_the_limit_goes_live_without_closing_ssh(limit_lab):
    """The unlimited hosts move to the limit (the lab inventory: the controller trusted) while the
    controller logs in on new SSH connections throughout and keeps a session open: none is refused.
    ufw changes `allow 22/tcp` into `limit 22/tcp` in place ("Rule updated"): no delete, no gap."""
    with watched(limit_lab) as prober:
        result = run_deploy(limit_lab.inventory, "-vvv")
        # more new connections than an untrusted source gets: the deploy takes seconds, so the
        # logins go on after it, under the limit it made live, until each host has had enough
        prober.reach(LIMIT + 3)
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    for host, results in prober.results.items():
        assert len(results) > LIMIT and set(results) == {"ok"}, (host, results)
    log = result.stdout + result.stderr  # -vvv: each command and its output
    ufw_lines = "\n".join(line for line in log.splitlines() if "ufw" in line or "Rule" in line)
    assert re.search(r"\[hs1\] >>> .*ufw limit 22/tcp", log) and "[hs1] Rule updated" in log, ufw_lines
    assert "Could not delete" not in log and not re.search(r"ufw delete (allow|limit) 22/tcp", log)
    assert_converged(limit_lab.inventory)


def test_the_firewalls_hold_the_limit_and_the_trusted_controller(limit_lab):
    bridge = limit_lab.info["dns"]
    trusted = f"allow from {bridge} to any port 22 proto tcp"
    assert ufw_rules(limit_lab, "hs1") == [trusted, "limit 22/tcp", "allow 80/tcp", "allow 443/tcp",
                                           "allow 8448/tcp"]
    numbered = limit_lab.ssh("hs1", "ufw status numbered").stdout
    assert re.search(rf"\[ 1\] 22/tcp +ALLOW IN +{re.escape(bridge)}\s", numbered), numbered
    assert re.search(r"\[ 2\] 22/tcp +LIMIT IN +Anywhere\s", numbered), numbered
    table = nft_table(limit_lab, "hs2")
    rules = [line.strip() for line in table.splitlines()]
    trusted_at = rules.index(f"tcp dport 22 ip saddr {bridge} accept")
    meter_at = next(i for i, r in enumerate(rules) if "update @ssh_meter4 { ip saddr limit rate over 10/minute" in r)
    assert trusted_at < meter_at < rules.index("tcp dport 22 accept"), table
    assert "ct state established,related accept" in rules[:trusted_at]


@pytest.mark.parametrize("host", ["hs1", "hs2"])
def test_an_untrusted_host_is_refused_after_the_limit_and_the_controller_is_not(limit_lab, host):
    # a lab host is not trusted: LIMIT new connections in a row, then refused
    assert probe_from(limit_lab, OTHER[host], host) == "+" * LIMIT + "-" * 5
    # the controller is: 25 logins in a row
    assert logins(limit_lab, host, 25) == ["ok"] * 25


def test_the_meters_contents_are_no_drift(limit_lab):
    meter = limit_lab.ssh("hs2", "nft list set inet federate ssh_meter4").stdout
    assert f"elements = {{ {limit_lab.address('hs1')} limit rate over 10/minute" in meter, meter
    assert_converged(limit_lab.inventory)


def _strip(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_the_deploy_is_never_cut_when_the_controller_is_not_trusted(limit_lab):
    """A deploy that takes the controller's exemption away: once it is connected, the controller
    logs in on new SSH connections throughout. From the firewall step on they count against the
    limit and are refused once it is reached, and the run (its established session) goes on to the
    end; so does an open session. A no-op run is over in seconds, before the limit is reached: the
    probing goes on after it until both hosts have refused."""
    output = []
    with watched(limit_lab, probing=False) as prober:
        deploy = subprocess.Popen([PYINFRA, limit_lab.info["untrusted"], "deploy.py", "-y"], cwd=REPO_ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  text=True)
        for line in deploy.stdout:
            output.append(_strip(line))
            connected = "".join(output)
            if not prober.thread.is_alive() and all(f"[{h}] Connected" in connected for h in ("hs1", "hs2")):
                prober.start()
        deploy.wait(timeout=1200)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all("refused" in r for r in prober.results.values()):
            time.sleep(0.5)
    # before any assertion, so a failure here leaves the next tests a controller that can connect
    time.sleep(35)  # until the controller's burst has aged out of both limits: new connections again
    log = "".join(output)
    assert deploy.returncode == 0, log[-6000:]
    for host, results in prober.results.items():
        # logged in until the firewall step took the exemption away, then refused (but for what
        # the limit allows)
        assert results[0] == "ok" and "refused" in results and set(results) <= {"ok", "refused"}, (host, results)
    assert ufw_rules(limit_lab, "hs1")[0] == "limit 22/tcp"  # no trusted range left
    assert "saddr" not in nft_table(limit_lab, "hs2").split("chain input")[1].split("tcp dport 22 ct state")[0]


def test_untrusted_re_run_changes_nothing_then_trust_is_restored(limit_lab):
    assert_converged(limit_lab.info["untrusted"])  # one connection per host, fewer than the limit
    result = run_deploy(limit_lab.inventory, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert changed_operations(result, "hs1") == [["Firewall | ufw: allow only SSH (22), 80, 443, 8448"]]
    assert changed_operations(result, "hs2") == [["Firewall | nftables.conf"],
                                                 ["Firewall | nftables: allow only SSH (22), 80, 443, 8448"]]
    assert logins(limit_lab, "hs1", 20) == ["ok"] * 20 and logins(limit_lab, "hs2", 20) == ["ok"] * 20
    # The untrusted runs' connections stay in the limit's count for 30 s: the drift tests next take
    # the controller's exemption away again, and must not find the count already used up.
    time.sleep(35)


DRIFT = {
    # the controller's rule deleted and added again with `ufw allow`: it lands after the limit,
    # where it never matches
    "hs1": "rule='from {bridge} to any port 22 proto tcp'; ufw delete allow $rule && ufw allow $rule",
    # the controller's rule deleted from the live table
    "hs2": "nft delete rule inet federate input handle $(nft -a list chain inet federate input "
           "| grep -F 'ip saddr {bridge} accept' | sed 's/.*handle //')",
}


@pytest.mark.parametrize("host", ["hs1", "hs2"])
def test_a_drifted_ssh_rule_is_repaired_by_one_run(limit_lab, host):
    bridge = limit_lab.info["dns"]
    limit_lab.ssh(host, DRIFT[host].format(bridge=bridge))
    if host == "hs1":
        assert ufw_rules(limit_lab, host)[0] == "limit 22/tcp"  # the trusted rule is behind the limit
    else:
        assert f"ip saddr {bridge} accept" not in nft_table(limit_lab, host)
    repair = run_deploy(limit_lab.inventory, "--json")
    assert repair.returncode == 0, repair.stderr[-3000:]
    firewall = "ufw" if host == "hs1" else "nftables"
    assert changed_operations(repair, host) == [[f"Firewall | {firewall}: allow only SSH (22), 80, 443, 8448"]]
    assert changed_operations(repair, OTHER[host]) == []
    if host == "hs1":
        assert ufw_rules(limit_lab, host)[:2] == [f"allow from {bridge} to any port 22 proto tcp", "limit 22/tcp"]
    else:
        assert f"ip saddr {bridge} accept" in nft_table(limit_lab, host)
    assert logins(limit_lab, host, 20) == ["ok"] * 20
    assert_converged(limit_lab.inventory)


def test_swapped_firewalls_limit_too(limit_lab, tmp_path):
    """ufw on Debian 13, nftables on Debian 12: the same limit, the controller still trusted."""
    def swap(hosts):
        data = dict(hosts)
        data["hs1"]["firewall"], data["hs2"]["firewall"] = "nftables", "ufw"
    inventory = write_inventory(tmp_path / "swapped.py", limit_lab.inventory, swap)
    result = run_deploy(inventory)
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert "ssh_meter4" in nft_table(limit_lab, "hs1")
    assert ufw_rules(limit_lab, "hs2")[:2] == [f"allow from {limit_lab.info['dns']} to any port 22 proto tcp",
                                               "limit 22/tcp"]
    time.sleep(35)  # the earlier probes between the hosts have aged out
    for host in ("hs1", "hs2"):
        assert probe_from(limit_lab, OTHER[host], host) == "+" * LIMIT + "-" * 5, host
        assert logins(limit_lab, host, 25) == ["ok"] * 25, host
    assert_converged(inventory)
