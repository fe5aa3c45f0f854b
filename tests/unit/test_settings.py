"""The settings model: defaults, derived values, and bad input refused with host + field named."""

import re
from pathlib import Path

import pytest

from federate.lab import pki
from federate.inventory import load_settings
from federate.settings import SettingsError, host_settings, inventory_settings


def data(**overrides):
    base = {
        "synapse_version": "1.163.2", "proxy": "nginx", "firewall": "ufw", "database": "sqlite",
        "tls": {"mode": "acme", "acme_directory": "https://acme.test/dir"},
        "homeservers": [{"server_name": "alpha.test"}],
        "ssh_user": "root", "ssh_key": "/k",
    }
    base.update(overrides)
    return base


def refused(host_data, field, host="h1"):
    with pytest.raises(SettingsError) as err:
        host_settings(host, host_data)
    assert err.value.host == host
    assert err.value.field == field, str(err.value)
    assert str(err.value).startswith(f"host {host}: {field}: ")
    return str(err.value)


def test_defaults_for_an_external_homeserver():
    hs = host_settings("h1", data()).homeservers[0]
    assert (hs.profile, hs.port, hs.public_host) == ("external", 8008, "alpha.test")
    assert hs.federation_whitelist is None and hs.federation_open
    assert not hs.delegated and hs.proxy_names == ("alpha.test",)


def test_internal_profile_defaults_to_no_federation():
    hs = host_settings("h1", data(homeservers=[{"server_name": "in.test", "profile": "internal"}])).homeservers[0]
    assert hs.federation_whitelist == () and not hs.federation_open
    assert hs.visibility["allow_profile_lookup_over_federation"] is False
    assert hs.visibility["user_directory"]["exclude_remote_users"] is True


def test_ports_are_assigned_around_given_ones():
    hss = host_settings("h1", data(homeservers=[
        {"server_name": "a.test"}, {"server_name": "b.test", "port": 8008}, {"server_name": "c.test"},
    ])).homeservers
    assert [hs.port for hs in hss] == [8009, 8008, 8010]


def test_delegation_names():
    hs = host_settings("h1", data(homeservers=[
        {"server_name": "alpha.test", "public_host": "matrix.alpha.test"}])).homeservers[0]
    assert hs.delegated and hs.proxy_names == ("alpha.test", "matrix.alpha.test")


@pytest.mark.parametrize("name", ["", "Alpha.test", "https://alpha.test", "alpha", "alpha.test/x",
                                  "alpha.test:99999", "-a.test", 42, None])
def test_bad_server_names(name):
    refused(data(homeservers=[{"server_name": name}]), "homeservers[0].server_name")


def test_missing_server_name():
    assert "is required" in refused(data(homeservers=[{"profile": "external"}]), "homeservers[0].server_name")


def test_server_name_twice_on_one_host():
    refused(data(homeservers=[{"server_name": "a.test"}, {"server_name": "a.test"}]),
            "homeservers[1].server_name")


def test_server_name_twice_across_hosts():
    with pytest.raises(SettingsError) as err:
        inventory_settings([("h1", data()), ("h2", data())])
    assert (err.value.host, err.value.field) == ("h2", "homeservers[0].server_name")
    assert "also deployed on host h1" in str(err.value)


@pytest.mark.parametrize("port", [80, 443, 8448, 22, 70000, 100, "8008", True])
def test_bad_ports(port):
    refused(data(homeservers=[{"server_name": "a.test", "port": port}]), "homeservers[0].port")


def test_port_collision():
    assert "already used" in refused(data(homeservers=[
        {"server_name": "a.test", "port": 9000}, {"server_name": "b.test", "port": 9000}]),
        "homeservers[1].port")


def test_ssh_port_is_never_a_synapse_port():
    refused(data(ssh_port=2222, homeservers=[{"server_name": "a.test", "port": 2222}]), "homeservers[0].port")


@pytest.mark.parametrize("key,value", [("proxy", "apache"), ("firewall", "iptables"), ("database", "mysql")])
def test_unknown_choices(key, value):
    assert "must be one of" in refused(data(**{key: value}), key)


def test_unknown_profile():
    refused(data(homeservers=[{"server_name": "a.test", "profile": "public"}]), "homeservers[0].profile")


@pytest.mark.parametrize("whitelist,field", [("a.test", "homeservers[0].federation_whitelist"),
                                             (["ok.test", "Not A Name"], "homeservers[0].federation_whitelist[1]")])
def test_bad_whitelists(whitelist, field):
    refused(data(homeservers=[{"server_name": "a.test", "federation_whitelist": whitelist}]), field)


def test_typos_are_errors_with_a_suggestion():
    assert "did you mean 'synapse_version'" in refused(data(synapse_verison="1"), "synapse_verison")
    assert "did you mean 'server_name'" in refused(
        data(homeservers=[{"server_name": "a.test", "server_nmae": "b"}]), "homeservers[0].server_nmae")
    assert "did you mean 'acme_directory'" in refused(
        data(tls={"mode": "acme", "acme_dir": "https://x"}), "tls.acme_dir")


def test_connector_keys_are_not_ours_to_judge():
    host_settings("h1", data(ssh_port=2222, ssh_known_hosts_file="/k", _sudo=True))


def test_synapse_version_must_be_exact():
    refused(data(synapse_version="latest"), "synapse_version")
    refused(data(synapse_version=None), "synapse_version")


def test_escape_hatch_cannot_touch_managed_keys():
    refused(data(homeservers=[{"server_name": "a.test", "synapse_extra": {"listeners": []}}]),
            "homeservers[0].synapse_extra.listeners")
    hs = host_settings("h1", data(homeservers=[{"server_name": "a.test",
                                                "synapse_extra": {"presence": {"enabled": False}}}])).homeservers[0]
    assert hs.synapse_extra == {"presence": {"enabled": False}}


def test_tls_checks():
    refused(data(tls={"mode": "acme", "acme_directory": "http://plain"}), "tls.acme_directory")
    refused(data(tls={"mode": "selfsigned"}), "tls.mode")
    refused(data(tls={"mode": "provided", "certificates": {}}), "tls.certificates.alpha.test")


@pytest.fixture()
def issue(tmp_path):
    """issue(name, *names) -> {cert, key} files from a test CA, for the given DNS names."""
    pki.make_ca("unit", tmp_path / "ca.pem", tmp_path / "ca.key")

    def _issue(label, *names):
        cert, key = tmp_path / f"{label}.crt", tmp_path / f"{label}.key"
        pki.issue_server_cert(tmp_path / "ca.pem", tmp_path / "ca.key", list(names), [], cert, key)
        return {"cert": str(cert), "key": str(key)}
    return _issue


def provided(certificates, **homeserver):
    return data(tls={"mode": "provided", "certificates": certificates},
                homeservers=[{"server_name": "alpha.test", **homeserver}])


def test_provided_certificates_are_checked_on_the_controller(issue, tmp_path):
    good = issue("good", "alpha.test", "matrix.alpha.test")
    tls = host_settings("h1", provided({"alpha.test": good}, public_host="matrix.alpha.test")).tls
    assert tls.certificates["alpha.test"] == good
    wildcard = issue("wild", "alpha.test", "*.alpha.test")
    host_settings("h1", provided({"alpha.test": wildcard}, public_host="matrix.alpha.test"))

    message = refused(provided({"alpha.test": issue("short", "alpha.test")}, public_host="matrix.alpha.test"),
                      "tls.certificates.alpha.test.cert")
    assert "is not valid for matrix.alpha.test" in message
    other = issue("other", "alpha.test")
    refused(provided({"alpha.test": {**good, "key": other["key"]}}), "tls.certificates.alpha.test.key")
    refused(provided({"alpha.test": {**good, "cert": str(tmp_path / "missing.pem")}}),
            "tls.certificates.alpha.test.cert")
    refused(provided({"alpha.test": {"cert": good["key"], "key": good["key"]}}), "tls.certificates.alpha.test.cert")
    message = refused(provided({"alpha.test": {"cert": good["cert"], "key": good["cert"]}}),
                      "tls.certificates.alpha.test.key")
    assert "BEGIN" not in message  # no file content in messages
    assert "is required" in refused(provided({"alpha.test": {"cert": good["cert"]}}), "tls.certificates.alpha.test.key")
    assert "needs 'cert' and 'key'" in refused(provided({}), "tls.certificates.alpha.test")


def test_provided_certificate_paths_are_relative_to_the_inventory(issue, tmp_path):
    issue("rel", "alpha.test")
    tls = host_settings("h1", provided({"alpha.test": {"cert": "rel.crt", "key": "rel.key"}}), base_dir=tmp_path).tls
    assert tls.certificates["alpha.test"] == {"cert": str(tmp_path / "rel.crt"), "key": str(tmp_path / "rel.key")}


def test_users():
    hs = host_settings("h1", data(homeservers=[{"server_name": "a.test", "users": [
        {"localpart": "alice", "admin": True}, {"localpart": "bob"}]}])).homeservers[0]
    assert [(u.localpart, u.admin) for u in hs.users] == [("alice", True), ("bob", False)]
    refused(data(homeservers=[{"server_name": "a.test", "users": [{"localpart": "Alice"}]}]),
            "homeservers[0].users[0].localpart")
    refused(data(homeservers=[{"server_name": "a.test", "users": [{"localpart": "a"}, {"localpart": "a"}]}]),
            "homeservers[0].users[1].localpart")


def test_ip_ranges_are_per_homeserver():
    refused(data(homeservers=[{"server_name": "a.test", "ip_range_whitelist": ["10.0.0.0/33"]}]),
            "homeservers[0].ip_range_whitelist[0]")
    s = host_settings("h1", data(homeservers=[{"server_name": "a.test"},
                                              {"server_name": "in.a.test", "profile": "internal",
                                               "ip_range_whitelist": ["10.9.0.0/24"]}]))
    assert [hs.ip_range_whitelist for hs in s.homeservers] == [(), ("10.9.0.0/24",)]
    # the old host-wide key would let the open homeserver into its internal neighbour's ranges
    assert "homeservers[N].ip_range_whitelist" in refused(data(ip_range_whitelist=["10.9.0.0/24"]),
                                                          "ip_range_whitelist")


def test_internal_federation_is_admitted_from_its_partners_hosts_only():
    hosts = [("hs1", data(ssh_hostname="10.1.2.11", homeservers=[
                 {"server_name": "a.test"},
                 {"server_name": "in.a.test", "profile": "internal", "federation_whitelist": ["a.test", "b.test"]}])),
             ("hs2", data(homeservers=[{"server_name": "b.test"}])), ("hs3", data(homeservers=[{"server_name": "c.test"}]))]
    resolved = inventory_settings(hosts, resolve=lambda name: {"hs2": ["10.1.2.12", "fd00::12"]}[name])
    external, internal = resolved["hs1"].homeservers
    assert external.federation_sources is None  # open: everyone
    assert internal.federation_sources == ("10.1.2.11", "10.1.2.12", "fd00::12")  # hs3 (c.test) not among them


def test_internal_partner_outside_the_inventory_needs_its_addresses():
    hs = {"server_name": "in.a.test", "profile": "internal", "federation_whitelist": ["far.example"]}
    with pytest.raises(SettingsError) as err:
        inventory_settings([("hs1", data(homeservers=[hs]))])
    assert err.value.field == "homeservers[0].federation_allow_addresses" and "far.example" in str(err.value)
    [internal] = inventory_settings([("hs1", data(homeservers=[{**hs, "federation_allow_addresses": [
        "192.0.2.0/24"]}]))])["hs1"].homeservers
    assert internal.federation_sources == ("192.0.2.0/24",)
    # an internal homeserver that federates with nobody admits nobody
    [closed] = host_settings("h1", data(homeservers=[{"server_name": "x.test", "profile": "internal"}])).homeservers
    assert closed.federation_sources == ()
    refused(data(homeservers=[{"server_name": "a.test", "federation_allow_addresses": ["192.0.2.1"]}]),
            "homeservers[0].federation_allow_addresses")
    refused(data(homeservers=[{**hs, "federation_allow_addresses": ["example.com"]}]),
            "homeservers[0].federation_allow_addresses[0]")


def test_unresolvable_partner_host_is_named():
    hosts = [("hs1", data(homeservers=[{"server_name": "in.a.test", "profile": "internal",
                                        "federation_whitelist": ["b.test"]}])),
             ("hs2", data(homeservers=[{"server_name": "b.test"}]))]

    def fails(name):
        raise OSError("no such host")
    with pytest.raises(SettingsError) as err:
        inventory_settings(hosts, resolve=fails)
    assert err.value.field == "homeservers[0].federation_whitelist" and "host hs2" in str(err.value)


def test_client_allow_ranges():
    [hs] = host_settings("h1", data(homeservers=[{"server_name": "a.test",
                                                  "client_allow_ranges": ["10.8.0.0/16"]}])).homeservers
    assert hs.client_allow_ranges == ("10.8.0.0/16",)
    refused(data(homeservers=[{"server_name": "a.test", "client_allow_ranges": []}]),
            "homeservers[0].client_allow_ranges")


def test_a_section_of_the_wrong_type_is_one_line_not_a_traceback():
    assert "must be a mapping such as {'after_deploy': true}, got True" in refused(data(verify=True), "verify")


def test_no_homeservers():
    refused(data(homeservers=[]), "homeservers")


def test_verify_setting():
    v = host_settings("h1", data()).verify
    assert (v.after_deploy, v.dns_server, v.ca_file) == (True, None, None)
    v = host_settings("h1", data(verify={"after_deploy": False, "dns_server": "10.0.0.1", "ca_file": "/ca.pem"})).verify
    assert (v.after_deploy, v.dns_server, v.ca_file) == (False, "10.0.0.1", "/ca.pem")
    refused(data(verify={"dns_server": "dns.example"}), "verify.dns_server")
    refused(data(verify={"after_deply": True}), "verify.after_deply")


def test_example_inventory_is_valid_with_the_library_defaults():
    root = Path(__file__).resolve().parents[2]
    settings = load_settings(root / "inventory.py")
    hs = settings["matrix.example.com"].homeservers[0]
    assert (hs.server_name, hs.public_host, hs.profile) == ("example.com", "matrix.example.com", "external")


def test_expired_provided_certificate_is_refused(issue, monkeypatch):
    import datetime
    import types

    class TenYearsLater(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime.now(tz) + datetime.timedelta(days=3650)
    # only the settings module's view of the clock moves
    monkeypatch.setattr("federate.settings.datetime",
                        types.SimpleNamespace(datetime=TenYearsLater, timezone=datetime.timezone))
    message = refused(provided({"alpha.test": issue("old", "alpha.test")}), "tls.certificates.alpha.test.cert")
    assert "expired on" in message


def test_postgres_names_that_collide_or_are_too_long_are_refused():
    message = refused(data(homeservers=[{"server_name": "a-b.example.com"}, {"server_name": "a.b.example.com"}],
                           database="postgres"),
                      "homeservers[1].server_name")
    assert "synapse_a_b_example_com" in message and "'a-b.example.com'" in message
    long_name = "a" * 50 + ".example.com"
    message = refused(data(homeservers=[{"server_name": long_name}], database="postgres"), "homeservers[0].server_name")
    assert "more than PostgreSQL's 63" in message
    # SQLite has neither limit
    host_settings("h1", data(homeservers=[{"server_name": long_name}], database="sqlite"))


def test_secrets_dir_is_absolute_under_the_inventory_folder(tmp_path):
    assert host_settings("h1", data(), base_dir=tmp_path).secrets_dir == str(tmp_path / ".secrets")
    assert host_settings("h1", data(secrets_dir="/srv/s")).secrets_dir == "/srv/s"


def test_each_homeserver_gets_its_own_os_user_that_useradd_accepts():
    from federate.settings import host_settings
    s = host_settings("h", {"database": "sqlite", "homeservers": [
        {"server_name": "internal.alpha.test"}, {"server_name": "a-very-long-server-name.example.org"}]})
    short, long = s.homeservers
    assert short.os_user == short.database_name == "synapse_internal_alpha_test"
    assert len(long.os_user) == 32 and long.os_user.startswith("synapse_a_very_long_serve_")
    assert re.fullmatch(r"[a-z_][a-z0-9_]*", long.os_user)


def test_two_names_sharing_an_os_user_are_refused_on_any_database():
    from federate.settings import SettingsError, host_settings
    with pytest.raises(SettingsError, match=r"homeservers\[1\]\.server_name: 'a\.b\.test' and 'a-b\.test' "
                                            r"would share the OS user 'synapse_a_b_test'"):
        host_settings("h", {"database": "sqlite", "homeservers": [{"server_name": "a-b.test"},
                                                                 {"server_name": "a.b.test"}]})
