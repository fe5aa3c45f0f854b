"""Discovery variants: delegation hosts, SRV records, and the DNS records each deploy prints."""

import json

import pytest

from federate.deploy import dns_records as dns
from federate.deploy.debian import BOOKWORM
from federate.deploy.proxy import proxy_for
from federate.settings import SettingsError, host_settings, inventory_settings
from federate.deploy.templating import render

BASE = {"synapse_version": "1.163.2", "proxy": "nginx", "firewall": "ufw", "database": "sqlite",
        "tls": {"mode": "acme", "acme_directory": "https://acme.test/dir"}}


def inventory(**hosts):
    return inventory_settings([(name, {**BASE, **data}) for name, data in hosts.items()])


def test_delegated_homeserver_serves_only_its_api_host():
    s = inventory(hs1={"homeservers": [{"server_name": "gamma.test", "public_host": "matrix.gamma.test",
                                        "discovery": "delegated"}]},
                  web={"delegations": [{"server_name": "gamma.test"}]})
    hs = s["hs1"].homeservers[0]
    assert hs.proxy_names == ("matrix.gamma.test",) and hs.cert_name == "matrix.gamma.test"
    assert s["web"].delegations[0].public_host == "matrix.gamma.test"  # filled in from the homeserver
    site = dict(proxy_for(s["web"], BOOKWORM).wanted_sites())["/etc/nginx/conf.d/federate-gamma.test.conf"]
    assert "server_name gamma.test;" in site and "proxy_pass" not in site
    body = site.split("/.well-known/matrix/server")[1].split("return 200 '")[1].split("'")[0]
    assert json.loads(body) == {"m.server": "matrix.gamma.test:443"}
    own = dict(proxy_for(s["hs1"], BOOKWORM).wanted_sites())["/etc/nginx/conf.d/federate-matrix.gamma.test.conf"]
    assert "/.well-known/matrix/server" not in own  # published by the delegation host instead


def test_delegation_needs_a_delegated_homeserver_or_a_public_host():
    with pytest.raises(SettingsError) as err:
        inventory(hs1={"homeservers": [{"server_name": "gamma.test", "public_host": "matrix.gamma.test"}]},
                  web={"delegations": [{"server_name": "gamma.test"}]})
    assert (err.value.host, err.value.field) == ("web", "delegations[0].server_name")
    with pytest.raises(SettingsError) as err:
        inventory(web={"delegations": [{"server_name": "elsewhere.test"}]})
    assert err.value.field == "delegations[0].public_host"
    with pytest.raises(SettingsError) as err:
        host_settings("h", {**BASE, "homeservers": [{"server_name": "g.test", "discovery": "delegated"}]})
    assert err.value.field == "homeservers[0].discovery"


def test_srv_homeserver_serves_no_server_well_known_and_needs_an_srv_record():
    s = inventory(hs2={"homeservers": [{"server_name": "delta.test", "public_host": "matrix.delta.test",
                                        "discovery": "srv"}]})
    settings = s["hs2"]
    site = dict(proxy_for(settings, BOOKWORM).wanted_sites())["/etc/nginx/conf.d/federate-delta.test.conf"]
    assert "/.well-known/matrix/server" not in site and "/.well-known/matrix/client" in site
    assert "server_name delta.test matrix.delta.test;" in site
    lines = dns.records(settings, ["10.0.0.2", "2001:db8::2"])
    assert "delta.test. IN A 10.0.0.2" in lines and "matrix.delta.test. IN AAAA 2001:db8::2" in lines
    assert "_matrix-fed._tcp.delta.test. IN SRV 10 0 8448 matrix.delta.test." in lines


def test_records_for_a_delegation_host():
    s = inventory(hs1={"homeservers": [{"server_name": "gamma.test", "public_host": "matrix.gamma.test",
                                        "discovery": "delegated"}]},
                  web={"delegations": [{"server_name": "gamma.test"}]})
    assert dns.records(s["web"], ["10.0.0.9"]) == ["gamma.test. IN A 10.0.0.9"]
    assert dns.records(s["hs1"], ["10.0.0.1"]) == ["matrix.gamma.test. IN A 10.0.0.1"]


def test_delegation_site_template_renders_without_a_proxy():
    text = render("federate-delegation.conf.j2", server_name="g.test", public_host="m.g.test",
                  cert="/c", key="/k", server_json='{"m.server":"m.g.test:443"}', client_json="{}",
                  listen_http2=" http2", http2_on=False, hsts_max_age=63072000)
    assert "listen 443 ssl" in text and "8448" not in text
