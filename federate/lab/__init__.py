"""The lab: disposable Debian hosts (bookworm or trixie, per host; systemd-nspawn on a bridge)
with a lab DNS, a lab ACME server and a forward proxy that reaches only the package registries the
controller uses.

    lab = Lab("dev", root=Path("."))
    info = lab.up(topology)      # the content of lab.json
    lab.status()
    lab.down()
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import dns.resolver

from federate.pyinfra_ext import lease

from . import hosts, network, pki, procs, rootfs, services, sources, topology as topo
from .state import DEFAULT_NAME, LabPaths, State, bridge_address, bridge_name, choose_subnet, \
    host_address, machine_name, validate_name

__all__ = ["Lab", "DEFAULT_NAME", "DEFAULT_TOPOLOGY"]

DEFAULT_TOPOLOGY = topo.DEFAULT_TOPOLOGY
REQUIRED_TOOLS = ["systemd-nspawn", "mmdebstrap", "dnsmasq", "pebble", "tinyproxy", "zstd", "ssh",
                  "ssh-keygen", "ip", "mount"]


LOGGER = logging.getLogger(__name__)
LOCK_DIR = Path("/run/federate")


class Lab:
    def __init__(self, name: str = DEFAULT_NAME, root: Path | str = ".", log=LOGGER.info):
        self.name = validate_name(name)
        self.paths = LabPaths(self.name, Path(root))
        self.log = log

    # --- public API ------------------------------------------------------------------------------

    def up(self, topology: dict | str | Path | None = None, release: str | None = None) -> dict:
        """Boot the lab (or re-report a running one); returns the content of lab.json.
        `release` is the Debian release of hosts whose topology entry names none."""
        spec = topo.load_topology(topology, release)
        with self._locked():
            running = self._running_info()
            if running is not None:
                changed = State(self.paths.state_file).get("topology") != spec
                if (topology is not None or release is not None) and changed:
                    raise RuntimeError(f"lab {self.name} is up with another topology: "
                                       f"`federate lab down --name {self.name}` first")
                self.log(f"lab {self.name} is already up ({self.paths.file('lab.json')})")
                return running
            if self.paths.state_file.exists():
                self.log(f"lab {self.name}: cleaning up a previous partial run")
                self._down()
            try:
                return self._up(spec)
            except BaseException:
                self.log(f"lab {self.name}: start failed, removing what was started")
                self._down()
                raise

    def down(self) -> None:
        """Remove everything the lab made. Safe to run twice and after a partial `up`."""
        with self._locked(remove=True):
            self._down()

    def status(self) -> dict:
        """What runs: services (alive or not) and hosts (address, nspawn alive, SSH answering)."""
        state = State(self.paths.state_file)
        if not state.data:
            return {"name": self.name, "up": False}
        processes = state.get("processes", {})
        report = {"name": self.name, "bridge": state.get("bridge"), "subnet": state.get("subnet"),
                  "services": {}, "hosts": {}}
        for key, proc in processes.items():
            if key.startswith("host:"):
                continue
            report["services"][key] = procs.is_ours(proc["pid"], proc["exe"])
        for host, address in state.get("addresses", {}).items():
            proc = processes.get(f"host:{host}")
            report["hosts"][host] = {
                "address": address,
                "release": (state.get("topology") or {}).get("hosts", {}).get(host, {}).get("release"),
                "running": bool(proc) and procs.is_ours(proc["pid"], proc["exe"]),
                "ssh": hosts.port_open(address, 22),
            }
            if report["hosts"][host]["ssh"]:
                report["hosts"][host]["deploy_lock"] = self._deploy_lock(address)
        report["up"] = bool(state.get("ready")) and all(report["services"].values()) and \
            all(h["running"] and h["ssh"] for h in report["hosts"].values())
        return report

    def hosts_cpu_seconds(self) -> float:
        """CPU time the lab's hosts (everything in their cgroups) have used so far: the host side
        of a deploy, apart from the controller's own (benchmarks)."""
        return sum(procs.cgroup_cpu_seconds(group) for group in self._cgroup_dirs())

    def _deploy_lock(self, address: str) -> dict | None:
        """The holder of a host's deploy lock and when its lease ends, or None (no run deploys)."""
        lock = lease.LockHolder()
        result = hosts.ssh(address, self.paths.file("id_ed25519"), self.paths.file("known_hosts"),
                           lock.command(), timeout=15)
        held = lock.process(result.stdout.splitlines()) if result.returncode == 0 else None
        if held is None or held["expires"] < time.time():
            return None
        return {"holder": held["holder"], "lease_ends": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                      time.gmtime(held["expires"]))}

    def stop_host(self, host: str) -> None:
        """Power a host off for good, as a lost machine (`down` still cleans up after it)."""
        with self._locked():
            proc = State(self.paths.state_file).get("processes", {}).get(f"host:{host}")
            if proc is None:
                raise RuntimeError(f"lab {self.name} has no host {host}")
            procs.stop([(proc["pid"], proc["exe"])], timeout=20)

    def point_names(self, names: list[str], host: str) -> None:
        """Let lab DNS names resolve to another host's address (a homeserver moved there):
        dnsmasq restarts with the changed records; their TTL is 0, so nobody caches the old ones."""
        with self._locked():
            state = State(self.paths.state_file)
            address = state.get("addresses", {})[host]
            moved = {**state.get("moved_names", {}), **{name: address for name in names}}
            state.set("moved_names", moved)
            dnsmasq = state.get("processes", {})["dnsmasq"]
            procs.stop([(dnsmasq["pid"], dnsmasq["exe"])], timeout=10)
            spec, bridge_ip = state.get("topology"), state.get("bridge_ip")
            records = {**topo.dns_records(spec, state.get("addresses"), bridge_ip), **moved}
            self._start_dns(state, bridge_ip, records, spec.get("srv", []))

    def info(self) -> dict | None:
        path = self.paths.file("lab.json")
        return json.loads(path.read_text()) if path.exists() else None

    # --- up ---------------------------------------------------------------------------------------

    def _up(self, spec: dict) -> dict:
        self._check_tools()
        state = State(self.paths.state_file)
        state.set("topology", spec)
        lowers = self._step("rootfs", lambda: {release: rootfs.ensure_rootfs(release, self.log)
                                               for release in topo.releases(spec)})
        bridge_ip, subnet = self._step("bridge", lambda: self._make_bridge(state))
        addresses = topo.host_addresses(spec, lambda i: host_address(subnet, i))
        state.set("addresses", addresses)
        self._step("ssh key and lab CA", self._make_keys)
        records = topo.dns_records(spec, addresses, bridge_ip)
        self._step("dns", lambda: self._start_dns(state, bridge_ip, records, spec.get("srv", [])))
        pebble_root = self._step("acme", lambda: self._start_acme(state, bridge_ip))
        pip_indexes = sources.controller_pip_indexes()
        self._step("proxy", lambda: self._start_proxy(state, bridge_ip, str(subnet), pip_indexes))
        no_proxy = ["localhost", "127.0.0.1", "::1", str(subnet), bridge_ip, *addresses.values(),
                    *sorted(records)]
        files = hosts.proxy_files(f"http://{bridge_ip}:{services.PROXY_PORT}", no_proxy,
                                  pip_indexes.index_url, list(pip_indexes.extra_index_urls))
        cas = {**hosts.controller_ca_files(),
               "federate-lab-ca.crt": self.paths.file("lab_ca.pem").read_bytes(),
               "federate-pebble-root.crt": pebble_root}
        self._step("hosts", lambda: self._start_hosts(state, spec, lowers, subnet, bridge_ip, files, cas))
        info = self._write_outputs(state, spec, subnet, bridge_ip)
        self._step("self-check", lambda: self._self_check(info))
        state.set("ready", True)
        return info

    def _step(self, title: str, action):
        start = time.monotonic()
        result = action()
        self.log(f"  {title:<18} {time.monotonic() - start:6.1f}s")
        return result

    def _check_tools(self) -> None:
        missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
        if missing:
            raise RuntimeError("missing programs for the lab: " + ", ".join(missing) +
                               " (Debian packages: systemd-container mmdebstrap dnsmasq-base pebble"
                               " tinyproxy-bin zstd openssh-client iproute2)")

    def _make_bridge(self, state: State):
        bridge = bridge_name(self.name)
        subnet = choose_subnet(self.name, network.routed_subnets(exclude_device=bridge))
        bridge_ip = bridge_address(subnet)
        state.data.update({"name": self.name, "bridge": bridge, "subnet": str(subnet),
                           "bridge_ip": bridge_ip})
        state.save()
        network.create_bridge(bridge, bridge_ip, subnet.prefixlen)
        return bridge_ip, subnet

    def _make_keys(self) -> None:
        key = self.paths.file("id_ed25519")
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"federate-lab-{self.name}",
                            "-f", str(key)], check=True, stdin=subprocess.DEVNULL)
        ca_cert, ca_key = self.paths.file("lab_ca.pem"), self.paths.file("lab_ca.key")
        if not ca_cert.exists() or not ca_key.exists():
            pki.make_ca(self.name, ca_cert, ca_key)

    def _start_dns(self, state: State, bridge_ip: str, records: dict, srv: list) -> None:
        command = services.dnsmasq_command(bridge_ip, records, srv, self.paths.file("dnsmasq.pid"))
        self._spawn(state, "dnsmasq", command)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.lifetime = [bridge_ip], 0.3
        deadline = time.monotonic() + 15
        while True:
            try:
                resolver.resolve(services.ACME_NAME, "A")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"lab DNS on {bridge_ip} does not answer (see dnsmasq.log)")
                time.sleep(0.1)

    def _start_acme(self, state: State, bridge_ip: str) -> bytes:
        cert, key = self.paths.file("pebble_cert.pem"), self.paths.file("pebble_key.pem")
        pki.issue_server_cert(self.paths.file("lab_ca.pem"), self.paths.file("lab_ca.key"),
                              [services.ACME_NAME], [bridge_ip], cert, key)
        config = self.paths.file("pebble-config.json")
        services.write_json(config, services.pebble_config(bridge_ip, cert, key))
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **services.PEBBLE_ENV}
        self._spawn(state, "pebble", services.pebble_command(config, bridge_ip), env=env)
        root, intermediate = services.pebble_chain(bridge_ip, self.paths.file("lab_ca.pem"))
        bundle = self.paths.file("lab_ca.pem").read_bytes() + root + intermediate
        self.paths.file(topo.CA_BUNDLE).write_bytes(bundle)
        return root

    def _start_proxy(self, state: State, bridge_ip: str, subnet: str, pip_indexes) -> None:
        apt = sources.controller_apt_sources()
        default_pip = [] if pip_indexes.index_url else sources.pip_default_index_hosts()
        allowed = sources.allowed_hosts(apt, pip_indexes, default_pip)
        state.set("proxy_allowed", allowed)
        filter_file = self.paths.file("tinyproxy-filter")
        filter_file.write_text("\n".join(services.host_filter_lines(allowed)) + "\n")
        config = self.paths.file("tinyproxy.conf")
        config.write_text(services.tinyproxy_config(bridge_ip, subnet, filter_file,
                                                    self.paths.file("tinyproxy.pid"),
                                                    services.upstream_proxy(dict(os.environ))))
        self._spawn(state, "tinyproxy", services.tinyproxy_command(config))
        services.wait_tcp(bridge_ip, services.PROXY_PORT)

    def _spawn(self, state: State, key: str, command: list[str], env: dict | None = None,
               cgroups: list[str] | None = None) -> int:
        exe = shutil.which(command[0]) or command[0]
        pid = procs.spawn([exe, *command[1:]], self.paths.file(f"{key.replace(':', '-')}.log"),
                          cgroups or [], env=env)
        state.record_process(key, pid, exe)
        return pid

    def _start_hosts(self, state: State, spec: dict, lowers: dict[str, Path], subnet, bridge_ip: str,
                     files: dict, cas: dict) -> None:
        """Prepare all roots in parallel (mostly key generation and CA rehashing), boot, wait."""
        addresses = state.get("addresses")
        prepare_start = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            roots = dict(zip(spec["hosts"], pool.map(
                lambda host: self._prepare_host(host, lowers[spec["hosts"][host]["release"]], addresses[host], subnet.prefixlen,
                                                bridge_ip, files, cas), spec["hosts"])))
        self.log(f"    roots prepared in {time.monotonic() - prepare_start:.1f}s")
        known = [line for host, root in roots.items() for line in hosts.known_hosts_lines(root, addresses[host])]
        self.paths.file("known_hosts").write_text("\n".join(known) + "\n")
        started = {host: (self._boot_host(state, host, root), time.monotonic()) for host, root in roots.items()}
        for host, (pid, start) in started.items():
            hosts.wait_ready(addresses[host], self.paths.file("id_ed25519"), self.paths.file("known_hosts"), pid)
            self.log(f"    {host} {addresses[host]} SSH and systemd ready {time.monotonic() - start:.1f}s after boot")

    def _prepare_host(self, host: str, lower: Path, address: str, prefixlen: int, bridge_ip: str,
                      files: dict, cas: dict) -> Path:
        root = hosts.mount_overlay(lower, self.paths.host_dir(host))
        hosts.configure_root(root, host=host, address=address, prefixlen=prefixlen, dns=bridge_ip,
                             authorized_key=self.paths.file("id_ed25519.pub").read_text(),
                             files=files, ca_files=cas)
        return root

    def _boot_host(self, state: State, host: str, root: Path) -> int:
        cgroups = procs.make_cgroups(f"{self.name}_{host}")
        state.data.setdefault("cgroups", []).extend(cgroups)
        command = hosts.nspawn_command(root, machine_name(self.name, host), state.get("bridge"))
        return self._spawn(state, f"host:{host}", command, cgroups=cgroups)

    def _write_outputs(self, state: State, spec: dict, subnet, bridge_ip: str) -> dict:
        addresses = state.get("addresses")
        key, known = self.paths.file("id_ed25519"), self.paths.file("known_hosts")
        inventory = self.paths.file("inventory.py")
        inventory.write_text(topo.render_inventory(topo.inventory_hosts(
            spec, addresses, ssh_key=key, known_hosts=known, bridge_ip=bridge_ip, subnet=str(subnet),
            secrets_dir=self.paths.file("secrets"), ca_file=self.paths.file(topo.CA_BUNDLE))))
        info = {
            "name": self.name, "bridge": state.get("bridge"), "subnet": str(subnet), "dns": bridge_ip,
            "ca_file": str(self.paths.file(topo.CA_BUNDLE)), "ssh_key": str(key),
            "known_hosts": str(known), "inventory": str(inventory),
            "acme_directory": topo.acme_directory(bridge_ip),
            "hosts": {host: {"address": address, "release": spec["hosts"][host]["release"]}
                      for host, address in addresses.items()},
            "homeservers": topo.homeserver_summaries(spec),
        }
        services.write_json(self.paths.file("lab.json"), info)
        return info

    def _self_check(self, info: dict) -> None:
        """From inside the first host: lab DNS and the ACME server's TLS chain work."""
        first = next(iter(info["hosts"].values()))["address"]
        url = f"https://{services.ACME_NAME}:{services.ACME_PORT}/dir"
        result = hosts.ssh(first, Path(info["ssh_key"]), Path(info["known_hosts"]),
                           f"curl -sSf --noproxy '*' {url} >/dev/null")
        if result.returncode != 0:
            raise RuntimeError(f"self-check failed: {url} from a lab host: {result.stderr.strip()}")

    def _running_info(self) -> dict | None:
        state = State(self.paths.state_file)
        if not state.get("ready"):
            return None
        report = self.status()
        return self.info() if report.get("up") else None

    # --- down -------------------------------------------------------------------------------------

    def _down(self) -> None:
        state = State(self.paths.state_file)
        processes = state.get("processes", {})
        host_procs = [(p["pid"], p["exe"]) for k, p in processes.items() if k.startswith("host:")]
        procs.stop(host_procs, timeout=20)
        cgroups = state.get("cgroups", []) or self._cgroup_dirs()
        procs.kill_cgroups(cgroups)
        procs.stop([(p["pid"], p["exe"]) for k, p in processes.items() if not k.startswith("host:")],
                   timeout=10)
        hosts.unmount_all(self.paths.var_dir)
        for group in set(cgroups) | set(self._cgroup_dirs()):
            procs.remove_cgroup(group)
        network.delete_bridge(state.get("bridge") or bridge_name(self.name))
        if self.paths.var_dir.exists() and not hosts.mounts_under(self.paths.var_dir):
            shutil.rmtree(self.paths.var_dir)
        if self.paths.state_dir.exists():
            shutil.rmtree(self.paths.state_dir)

    def _cgroup_dirs(self) -> list[str]:
        """Cgroups this lab made (named after it), found even without a state file."""
        found = []
        for root in procs.cgroup_roots():
            found += [str(p) for p in root.glob(f"{procs.CGROUP_PREFIX}{self.name}_*")]
        return found

    @contextmanager
    def _locked(self, remove: bool = False):
        """One `up`/`down` per lab at a time (the lock file goes with `down`)."""
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        lock_path = LOCK_DIR / f"lab-{self.name}.lock"
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
            if remove:
                lock_path.unlink(missing_ok=True)
                try:
                    LOCK_DIR.rmdir()
                except OSError:
                    pass  # other labs' locks are still there
