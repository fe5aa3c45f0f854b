"""The lab's pure parts: naming, addressing, package sources, proxy rules and rendered files.
Nothing here needs root or boots anything."""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

import pytest

from federate.lab import hosts, services, sources, topology
from federate.lab.state import LabPaths, bridge_name, choose_subnet, host_address, machine_name, \
    validate_name

ONE_LINE = """\
# comment
deb http://mirror.example/debian bookworm main contrib
deb [arch=amd64 signed-by=/k.gpg] https://other.example/apt stable main
deb-src http://mirror.example/debian bookworm main
"""

DEB822 = """\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example/
Suites: bookworm
Components: main

Types: deb-src
URIs: http://mirror.example/debian
Suites: bookworm
Components: main
"""


# --- names and addresses ---------------------------------------------------------------------------

def test_bridge_names_fit_an_interface_name_and_differ():
    names = ["demo", "dev", "t12345", "a-very-long-lab-name-1", "a-very-long-lab-name-2"]
    bridges = [bridge_name(n) for n in names]
    assert all(len(b) <= 15 and b.startswith("fl-") for b in bridges)
    assert len(set(bridges)) == len(bridges)
    assert bridge_name("demo") == "fl-demo"


def test_machine_names_differ_between_labs():
    assert machine_name("demo", "hs1") != machine_name("dev", "hs1")


@pytest.mark.parametrize("bad", ["", "Demo", "a_b", "-x", "x" * 40, "../etc"])
def test_bad_lab_names_are_refused(bad):
    with pytest.raises(ValueError):
        validate_name(bad)


def test_subnet_is_deterministic_private_and_avoids_taken_routes():
    first = choose_subnet("demo", [])
    assert first == choose_subnet("demo", [])
    assert first.prefixlen == 24 and first.subnet_of(ipaddress.ip_network("10.0.0.0/8"))
    assert choose_subnet("dev", []) != first
    other = choose_subnet("demo", [first])
    assert other != first and not other.overlaps(first)
    # a wider route covering the first choice also moves it
    assert not choose_subnet("demo", [ipaddress.ip_network(f"{first.network_address}/16", strict=False)]) \
        .overlaps(ipaddress.ip_network(f"{first.network_address}/16", strict=False))


def test_host_addresses_start_at_eleven():
    subnet = ipaddress.ip_network("10.200.3.0/24")
    assert [host_address(subnet, i) for i in range(2)] == ["10.200.3.11", "10.200.3.12"]


def test_state_dirs(tmp_path):
    assert LabPaths("demo", tmp_path).state_dir == tmp_path.resolve() / ".lab"
    assert LabPaths("dev", tmp_path).state_dir == tmp_path.resolve() / ".lab-dev"


# --- package sources and proxy rules -------------------------------------------------------------

def test_one_line_sources():
    parsed = sources.parse_one_line_sources(ONE_LINE)
    assert [(s.host, s.suite, s.components) for s in parsed] == [
        ("mirror.example", "bookworm", ("main", "contrib")),
        ("other.example", "stable", ("main",)),
    ]
    assert parsed[0].one_line() == "deb http://mirror.example/debian bookworm main contrib"


def test_deb822_sources_skip_disabled_and_source_stanzas():
    parsed = sources.parse_deb822_sources(DEB822)
    assert [(s.uri, s.suite) for s in parsed] == [
        ("http://mirror.example/debian", "bookworm"),
        ("http://mirror.example/debian", "bookworm-updates"),
        ("http://mirror.example/debian-security", "bookworm-security"),
    ]


def test_release_sources_keep_only_that_release():
    parsed = sources.parse_one_line_sources(ONE_LINE) + sources.parse_deb822_sources(DEB822)
    assert {s.suite for s in sources.release_sources(parsed, "bookworm")} == {
        "bookworm", "bookworm-updates", "bookworm-security"}


# What Debian 13 installs by default: one deb822 file naming trixie's suites.
TRIXIE_DEB822 = """\
Types: deb
URIs: http://mirror.example/debian
Suites: trixie trixie-updates
Components: main non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: trixie-security
Components: main non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def test_a_bookworm_controller_derives_trixie_sources_from_its_own_mirrors():
    parsed = sources.parse_one_line_sources(ONE_LINE) + sources.parse_deb822_sources(DEB822)
    derived = sources.sources_for_release(parsed, "trixie", "bookworm")
    assert [(s.uri, s.suite, s.components) for s in derived] == [
        ("http://mirror.example/debian", "trixie", ("main", "contrib")),
        ("http://mirror.example/debian", "trixie", ("main",)),
        ("http://mirror.example/debian", "trixie-updates", ("main",)),
        ("http://mirror.example/debian-security", "trixie-security", ("main",)),
    ]
    # its own release is taken as written
    assert sources.sources_for_release(parsed, "bookworm", "bookworm") == sources.release_sources(parsed, "bookworm")


def test_a_trixie_controller_derives_bookworm_sources():
    parsed = sources.parse_deb822_sources(TRIXIE_DEB822)
    derived = sources.sources_for_release(parsed, "bookworm", "trixie")
    assert [s.one_line() for s in derived] == [
        "deb http://mirror.example/debian bookworm main non-free-firmware",
        "deb http://mirror.example/debian bookworm-updates main non-free-firmware",
        "deb http://mirror.example/debian-security bookworm-security main non-free-firmware",
    ]
    assert [s.suite for s in sources.sources_for_release(parsed, "trixie", "trixie")] == [
        "trixie", "trixie-updates", "trixie-security"]


def test_no_debian_suite_derives_nothing():
    third_party = sources.parse_one_line_sources("deb https://other.example/apt cloud-sdk-bookworm main\n")
    assert sources.sources_for_release(third_party, "trixie", "bookworm") == []


def test_controller_release_is_this_machines_codename():
    from federate.deploy.debian import RELEASES
    major = int(Path("/etc/debian_version").read_text().split(".")[0])
    assert sources.controller_release() == RELEASES[major].codename


def test_rootfs_recipe_and_cache_are_per_release():
    from federate.lab import rootfs
    derived = sources.sources_for_release(sources.parse_deb822_sources(TRIXIE_DEB822), "bookworm", "trixie")
    recipe = rootfs.build_recipe("bookworm", derived)
    command = rootfs.mmdebstrap_command(recipe, Path("/tmp/out.tar.zst"))
    assert command[-4:] == ["bookworm", "/tmp/out.tar.zst", *[s.one_line() for s in derived]][-4:]
    assert rootfs.recipe_stamp(recipe) != rootfs.recipe_stamp(rootfs.build_recipe("trixie", derived))
    assert rootfs.Cache("trixie").extracted != rootfs.Cache("bookworm").extracted
    with pytest.raises(ValueError, match="release: 'sid'"):
        rootfs.check_release("sid")


def test_pip_indexes_later_files_and_environment_win():
    texts = ["[global]\nindex-url = https://first.example/simple\n",
             "[global]\nextra-index-url = file:///opt/wheels https://extra.example/simple\n"]
    assert sources.parse_pip_indexes(texts, {}) == (
        "https://first.example/simple", ["file:///opt/wheels", "https://extra.example/simple"])
    assert sources.parse_pip_indexes(texts, {"PIP_INDEX_URL": "https://env.example/simple"})[0] == \
        "https://env.example/simple"
    assert sources.network_urls(["file:///opt/wheels", "https://x.example/simple"]) == \
        ["https://x.example/simple"]


def test_allowed_hosts_default_pip_index():
    apt = sources.parse_deb822_sources(DEB822)
    pip = sources.PipIndexes(None, ("https://extra.example/simple",))
    allowed = sources.allowed_hosts(apt, pip, ["index.example", "files.example"])
    assert allowed == ["extra.example", "files.example", "index.example", "mirror.example"]


def test_allowed_hosts_configured_index_replaces_the_default():
    pip = sources.PipIndexes("https://mine.example/simple", ())
    assert sources.allowed_hosts([], pip, ["index.example"]) == ["mine.example"]


def test_proxy_filter_is_anchored_and_exact():
    import re
    lines = services.host_filter_lines(["mirror.example", "a-b.example"])
    assert lines == ["^mirror\\.example$", "^a-b\\.example$"]
    assert re.search(lines[0], "mirror.example") and not re.search(lines[0], "mirrorXexample")
    assert not re.search(lines[0], "evil-mirror.example") and not re.search(lines[0], "mirror.example.evil")


def test_tinyproxy_config_denies_by_default():
    config = services.tinyproxy_config("10.1.2.1", "10.1.2.0/24", Path("/s/filter"), Path("/run/p.pid"))
    assert "FilterDefaultDeny Yes" in config and "ConnectPort 443" in config
    assert "Listen 10.1.2.1" in config and "Allow 10.1.2.0/24" in config


def test_dnsmasq_answers_only_lab_names_on_the_bridge():
    command = services.dnsmasq_command("10.1.2.1", {"a.test": "10.1.2.11"},
                                       [{"name": "_matrix-fed._tcp.a.test", "target": "b.test", "port": 443}],
                                       Path("/s/dnsmasq.pid"))
    assert "--no-resolv" in command and "--no-hosts" in command and "--bind-interfaces" in command
    assert "--listen-address=10.1.2.1" in command
    assert "--host-record=a.test,10.1.2.11" in command
    assert "--srv-host=_matrix-fed._tcp.a.test,b.test,443,0,0" in command


# --- topology and rendered files -----------------------------------------------------------------

def test_default_topology_summaries():
    summary = topology.homeserver_summaries(topology.load_topology(None))
    assert summary == [
        {"server_name": "alpha.test", "public_host": "matrix.alpha.test", "host": "hs1",
         "profile": "external", "federation_whitelist": None},
        {"server_name": "internal.alpha.test", "public_host": "internal.alpha.test", "host": "hs1",
         "profile": "internal", "federation_whitelist": ["alpha.test"]},
        {"server_name": "beta.test", "public_host": "beta.test", "host": "hs2",
         "profile": "external", "federation_whitelist": None},
    ]


def test_internal_without_whitelist_gets_an_empty_one():
    assert topology.homeserver_summary("h", {"server_name": "x.test", "profile": "internal"})[
        "federation_whitelist"] == []


def test_dns_records_strip_ports_and_include_acme_and_extra_names():
    spec = {"hosts": {"hs1": {"homeservers": [{"server_name": "a.test:8448"}]},
                      "hs2": {"homeservers": [{"server_name": "b.test", "public_host": "m.b.test"}]}},
            "extra_names": {"other.test": "hs2", "fixed.test": "10.1.2.99"}}
    records = topology.dns_records(spec, {"hs1": "10.1.2.11", "hs2": "10.1.2.12"}, "10.1.2.1")
    assert records == {services.ACME_NAME: "10.1.2.1", "a.test": "10.1.2.11", "b.test": "10.1.2.12",
                       "m.b.test": "10.1.2.12", "other.test": "10.1.2.12", "fixed.test": "10.1.2.99"}


def test_topology_refuses_bad_input():
    with pytest.raises(ValueError):
        topology.load_topology({"hosts": {}})
    with pytest.raises(ValueError):
        topology.load_topology({"hosts": {"bad name": {"homeservers": []}}})
    with pytest.raises(ValueError, match=r"hosts\.hs1\.release: 'buster'"):
        topology.load_topology({"hosts": {"hs1": {"release": "buster", "homeservers": []}}})


def test_each_host_gets_a_release():
    demo = topology.load_topology(None)
    assert {h: s["release"] for h, s in demo["hosts"].items()} == {"hs1": "bookworm", "hs2": "trixie"}
    assert topology.releases(demo) == ["bookworm", "trixie"]
    spec = {"hosts": {"a": {"homeservers": []}, "b": {"release": "bookworm", "homeservers": []}}}
    chosen = topology.load_topology(spec, release="trixie")  # --release: hosts naming none
    assert [s["release"] for s in chosen["hosts"].values()] == ["trixie", "bookworm"]
    assert [s["release"] for s in topology.load_topology(spec)["hosts"].values()] == ["bookworm", "bookworm"]


def test_inventory_is_valid_python_with_absolute_paths(tmp_path):
    spec = topology.load_topology(None)
    rendered = topology.render_inventory(topology.inventory_hosts(
        spec, {"hs1": "10.1.2.11", "hs2": "10.1.2.12"}, ssh_key=tmp_path / "id_ed25519",
        known_hosts=tmp_path / "known_hosts", bridge_ip="10.1.2.1", subnet="10.1.2.0/24",
        secrets_dir=tmp_path / "secrets"))
    namespace: dict = {}
    exec(compile(rendered, "inventory.py", "exec"), namespace)
    ast.parse(rendered)
    hs1_name, hs1 = namespace["lab_hosts"][0]
    assert hs1_name == "hs1" and hs1["ssh_hostname"] == "10.1.2.11"
    assert hs1["ssh_key"] == str(tmp_path / "id_ed25519") and Path(hs1["ssh_key"]).is_absolute()
    assert hs1["ssh_strict_host_key_checking"] == "yes"
    # passed through unchanged, each allowed into the lab's private subnet
    assert hs1["homeservers"] == [{"ip_range_whitelist": ["10.1.2.0/24"], **hs} for hs in spec["hosts"]["hs1"]["homeservers"]]
    assert hs1["tls"] == {"mode": "acme", "acme_directory": "https://10.1.2.1:14000/dir",
                          "email": topology.ACME_EMAIL}
    assert "ip_range_whitelist" not in hs1 and hs1["trusted_key_servers"] == []
    assert hs1["secrets_dir"] == str(tmp_path / "secrets")
    assert hs1["verify"] == {"dns_server": "10.1.2.1", "ca_file": str(tmp_path / "ca_bundle.pem")}


# --- files inside a host -------------------------------------------------------------------------

def test_network_file_has_no_gateway():
    text = hosts.network_file("10.1.2.11", 24, "10.1.2.1")
    assert "Address=10.1.2.11/24" in text and "DNS=10.1.2.1" in text
    assert "Gateway" not in text


def test_proxy_files_keep_lab_traffic_direct():
    files = hosts.proxy_files("http://10.1.2.1:3128", ["10.1.2.0/24", "a.test"], None,
                              ["https://extra.example/simple"])
    assert 'Acquire::https::Proxy "http://10.1.2.1:3128";' in files["/etc/apt/apt.conf.d/80federate-lab-proxy"]
    assert "no_proxy=10.1.2.0/24,a.test" in files["/etc/environment"]
    pip = files["/etc/pip.conf"]
    assert "proxy = http://10.1.2.1:3128" in pip and "cert = /etc/ssl/certs/ca-certificates.crt" in pip
    assert "extra-index-url = https://extra.example/simple" in pip and "index-url = " not in pip.replace(
        "extra-index-url", "")


def test_nspawn_command_flags():
    command = hosts.nspawn_command(Path("/r"), "abcd-hs1", "fl-dev")
    for flag in ("-b", "--register=no", "--keep-unit", "--resolv-conf=off", "--timezone=off",
                 "--network-bridge=fl-dev", "--machine=abcd-hs1"):
        assert flag in command


def test_tinyproxy_chains_to_the_controllers_own_proxy():
    assert services.upstream_proxy({}) is None
    assert services.upstream_proxy({"https_proxy": "http://proxy.corp:8080/"}) == "proxy.corp:8080"
    config = services.tinyproxy_config("10.1.2.1", "10.1.2.0/24", Path("/f"), Path("/p"), "proxy.corp:8080")
    assert "Upstream http proxy.corp:8080" in config
