"""Rendered Caddyfile and nftables policy: the same routes and ports as the nginx and ufw variants."""

import json
import re

from federate.deploy import system
from federate.deploy.firewall import nftables
from federate.deploy.debian import BOOKWORM
from federate.deploy.proxy import caddy, proxy_for
from federate.lab import pki
from federate.settings import host_settings


def settings(homeservers, tls=None, **extra):
    return host_settings("h1", {
        "synapse_version": "1.163.2", "proxy": "caddy", "firewall": "nftables", "database": "sqlite",
        "tls": tls or {"mode": "acme", "acme_directory": "https://acme.test/dir", "email": "ops@alpha.test"},
        "homeservers": homeservers, **extra,
    })


def site_block(caddyfile: str, address_line_start: str) -> str:
    start = caddyfile.index("\n" + address_line_start) + 1
    return caddyfile[start:caddyfile.index("\n}\n", start)]


def test_caddy_site_routes_like_nginx():
    s = settings([{"server_name": "alpha.test", "public_host": "matrix.alpha.test", "port": 8100}])
    caddyfile = proxy_for(s, BOOKWORM).render_caddyfile()
    site = site_block(caddyfile, "alpha.test:443")
    assert site.splitlines()[0] == "alpha.test:443, matrix.alpha.test:443 {"
    raw_federation = ('expression `{http.request.uri}.startsWith("/_matrix/federation/") || '
                      '{http.request.uri}.startsWith("/_matrix/key/")`\n')
    assert raw_federation in site and "remote_ip" not in site  # open federation, told by the raw path
    assert "path /_matrix/* /_synapse/client/*\n" in site
    assert "reverse_proxy 127.0.0.1:8100\n" in site  # no path rewriting, no header changes
    assert "max_size 52428800" in site and "> 52428800`" in site  # nginx's 50M is 50 MiB
    assert re.search(r"handle /_synapse/admin\* \{\s+respond 404\s+\}", site)
    assert re.search(r"\thandle \{\s+respond 404\s+\}", site)  # unmatched paths: a real 404
    assert "\ttls {\n" in site  # ACME: caddy obtains the certificate itself
    # port 8448: federation only
    federation = site_block(caddyfile, "alpha.test:8448")
    assert federation.splitlines()[0] == "alpha.test:8448, matrix.alpha.test:8448 {"
    assert raw_federation in federation
    assert "/_synapse/client" not in federation and "well-known" not in federation
    assert "Strict-Transport-Security" not in federation and "Strict-Transport-Security" in site


def test_caddy_well_known_answers_are_plain_json_with_cors():
    s = settings([{"server_name": "alpha.test", "public_host": "matrix.alpha.test"}])
    site = site_block(proxy_for(s, BOOKWORM).render_caddyfile(), "alpha.test:443")
    for kind, document in (("server", {"m.server": "matrix.alpha.test:443"}),
                           ("client", {"m.homeserver": {"base_url": "https://matrix.alpha.test"}})):
        block = site.split(f"handle /.well-known/matrix/{kind} {{")[1].split("\t}")[0]
        assert "header Content-Type application/json" in block
        assert 'header Access-Control-Allow-Origin "*"' in block
        body = re.search(r"respond `(.*)` 200", block).group(1)
        assert json.loads(body) == document


def test_caddy_global_options_acme_directory_and_email():
    caddyfile = proxy_for(settings([{"server_name": "alpha.test"}]), BOOKWORM).render_caddyfile()
    options = caddyfile.split("\n}\n")[0]
    assert "acme_ca https://acme.test/dir" in options and "email ops@alpha.test" in options
    assert "protocols h1 h2" in options  # no HTTP/3: the firewall opens no UDP port
    assert "redir https://{host}{uri} 301" in caddyfile


def test_caddy_provided_certificates_and_closed_federation(tmp_path):
    pki.make_ca("unit", tmp_path / "ca.pem", tmp_path / "ca.key")
    pki.issue_server_cert(tmp_path / "ca.pem", tmp_path / "ca.key", ["in.test"], [], tmp_path / "c.pem",
                          tmp_path / "k.pem")
    s = settings([{"server_name": "in.test", "profile": "internal"}],
                 tls={"mode": "provided", "certificates": {"in.test": {"cert": str(tmp_path / "c.pem"),
                                                                         "key": str(tmp_path / "k.pem")}}})
    caddyfile = proxy_for(s, BOOKWORM).render_caddyfile()
    assert "acme_ca" not in caddyfile and "email" not in caddyfile
    site = site_block(caddyfile, "in.test:443")
    assert site.splitlines()[0] == "in.test:443 {"  # no federation: no 8448
    assert "tls /etc/federate/tls/in.test/fullchain.pem /etc/federate/tls/in.test/privkey.pem" in site


def test_caddy_delegation_and_srv_sites():
    s = settings([{"server_name": "beta.test", "public_host": "matrix.beta.test", "discovery": "srv"}],
                 delegations=[{"server_name": "gamma.test", "public_host": "matrix.gamma.test"}])
    caddyfile = proxy_for(s, BOOKWORM).render_caddyfile()
    srv = site_block(caddyfile, "beta.test:443")
    assert "/.well-known/matrix/server" not in srv and "/.well-known/matrix/client" in srv
    delegation = site_block(caddyfile, "gamma.test:443")
    assert '{"m.server":"matrix.gamma.test:443"}' in delegation and "reverse_proxy" not in delegation


def test_upload_sizes():
    assert caddy.size_bytes("1G") == 1024 ** 3 and caddy.size_bytes("100") == 100


def test_caddy_needs_no_certbot():
    s = settings([{"server_name": "alpha.test"}])
    assert "certbot" not in system.wanted_packages(s, proxy_for(s, BOOKWORM))
    assert {"caddy", "nftables"} <= set(system.wanted_packages(s, proxy_for(s, BOOKWORM)))


def test_nftables_policy_allows_only_ssh_and_web_ports():
    conf = nftables.render_nftables_conf(2222, rate_limit=False)  # the limit: tests/unit/test_ssh_limit_rules.py
    assert "\nflush ruleset" not in conf  # only the federate table is replaced
    assert conf.index("table inet federate\ndelete table inet federate\n") < conf.index("table inet federate {")
    input_chain = conf.split("chain input {")[1].split("}\n")[0]
    assert "policy drop;" in input_chain
    rules = [line.strip() for line in input_chain.splitlines()
             if line.strip() and not line.strip().startswith(("#", "type"))]
    assert rules == ['iifname "lo" accept', "ct state established,related accept", "ct state invalid drop",
                     "meta l4proto { icmp, ipv6-icmp } accept", "tcp dport 2222 accept",
                     "tcp dport { 80, 443, 8448 } accept"]
    assert "type filter hook forward priority filter; policy drop;" in conf
