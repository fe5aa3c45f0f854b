"""Rendered proxy files and homeserver.yaml harden as issue 11 asks: Mozilla "intermediate" TLS, HSTS,
no version, a default server refusing unknown names, 8448 for federation only, and an internal
homeserver's federation API locked to its partners' addresses (nginx and caddy alike)."""

import re

import yaml

from federate.deploy import synapse
from federate.deploy.debian import BOOKWORM, TRIXIE
from federate.deploy.proxy import HSTS_MAX_AGE, proxy_for
from federate.settings import inventory_settings

MOZILLA_INTERMEDIATE_TLS12 = {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
                              "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
                              "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"}


def lab_like(proxy="nginx", **internal):
    """hs1: alpha.test and internal.alpha.test (partner alpha.test); hs2: beta.test."""
    base = {"synapse_version": "1.163.2", "proxy": proxy, "firewall": "ufw", "database": "sqlite",
            "tls": {"mode": "acme", "acme_directory": "https://acme.test/dir"}}
    hosts = [("hs1", {**base, "ssh_hostname": "10.1.2.11", "homeservers": [
                 {"server_name": "alpha.test", "public_host": "matrix.alpha.test"},
                 {"server_name": "internal.alpha.test", "profile": "internal", "federation_whitelist": ["alpha.test"],
                  **internal}]}),
             ("hs2", {**base, "ssh_hostname": "10.1.2.12", "homeservers": [{"server_name": "beta.test"}]})]
    return inventory_settings(hosts)["hs1"]


def servers(conf: str) -> list[str]:
    """The top-level server blocks of an nginx file."""
    return ["server {" + block for block in re.split(r"^server \{", conf, flags=re.M)[1:]]


def test_nginx_tls_is_mozilla_intermediate_in_every_server_block():
    nginx = proxy_for(lab_like(), BOOKWORM)
    blocks = [b for site in nginx.wanted_sites().values() for b in servers(site)] + servers(nginx.render_http_site())
    tls_blocks = [b for b in blocks if "ssl" in b]
    assert len(tls_blocks) == 5  # 443 and 8448 of each homeserver, and the default server
    for block in tls_blocks:
        assert "ssl_protocols TLSv1.2 TLSv1.3;" in block
        ciphers = re.search(r"ssl_ciphers (\S+);", block).group(1).split(":")
        assert set(ciphers) == MOZILLA_INTERMEDIATE_TLS12 and not any("CBC" in c or "SHA;" in c for c in ciphers)
        assert "ssl_session_tickets off;" in block and "ssl_session_cache shared:federate:10m;" in block


def test_nginx_hsts_on_443_only_and_no_version():
    nginx = proxy_for(lab_like(), BOOKWORM)
    site = nginx.wanted_sites()["/etc/nginx/conf.d/federate-alpha.test.conf"]
    on_443, on_8448 = servers(site)
    hsts = f'add_header Strict-Transport-Security "max-age={HSTS_MAX_AGE}" always;'
    assert HSTS_MAX_AGE >= 2 * 365 * 24 * 3600
    # the server's, and again in each location that adds headers of its own (nginx drops the server's there)
    assert on_443.count(hsts) == 1 + on_443.count("add_header Access-Control-Allow-Origin")
    assert hsts not in on_8448
    for block in servers(site) + servers(nginx.render_http_site()):
        assert "server_tokens off;" in block


def test_nginx_8448_serves_only_federation_and_keys():
    site = proxy_for(lab_like(), BOOKWORM).wanted_sites()["/etc/nginx/conf.d/federate-alpha.test.conf"]
    on_8448 = servers(site)[1]
    assert "listen 8448 ssl http2;" in on_8448 and "listen 443" not in on_8448
    assert re.findall(r"location (\S+(?: \S+)?) \{", on_8448) == ["~ ^/_matrix/(federation|key)/", "/"]
    assert "return 404;" in on_8448.split("location / {")[1]


def test_nginx_default_server_refuses_unknown_names():
    http_site = proxy_for(lab_like(), TRIXIE).render_http_site()
    default = servers(http_site)[1]
    assert "ssl_reject_handshake on;" in default
    for port in ("443", "[::]:443", "8448", "[::]:8448"):
        assert f"listen {port} ssl default_server;" in default
    # a host with no federating homeserver does not listen on 8448 at all
    closed = inventory_settings([("h", {"homeservers": [{"server_name": "in.test", "profile": "internal"}]})])["h"]
    assert "8448" not in proxy_for(closed, BOOKWORM).render_http_site()


def test_nginx_internal_federation_only_from_partners_hosts():
    s = lab_like(federation_allow_addresses=["192.0.2.0/24"], client_allow_ranges=["10.8.0.0/16"])
    site = proxy_for(s, BOOKWORM).wanted_sites()["/etc/nginx/conf.d/federate-internal.alpha.test.conf"]
    for block in servers(site):
        federation = block.split("location ~ ^/_matrix/(federation|key)/ {")[1].split("\n    }")[0]
        # the given partner range and hs1 (alpha.test's host); not hs2
        assert re.findall(r"allow (\S+);", federation) == ["192.0.2.0/24", "10.1.2.11"]
        assert "deny all;" in federation and "error_page 403 = @federation_forbidden;" in federation
        assert '"errcode":"M_FORBIDDEN"' in block.split("location @federation_forbidden {")[1]
    client = servers(site)[0].split("location ~ ^(/_matrix|/_synapse/client) {")[1].split("\n    }")[0]
    assert re.findall(r"allow (\S+);", client) == ["10.8.0.0/16"] and "deny all;" in client
    # the open neighbour answers everyone
    open_site = proxy_for(s, BOOKWORM).wanted_sites()["/etc/nginx/conf.d/federate-alpha.test.conf"]
    assert "allow " not in open_site and "deny " not in open_site


def test_each_api_is_told_by_the_raw_path_synapse_routes_by():
    """The proxies pick a route by the decoded, cleaned path, Synapse by the raw one it is passed:
    `/_matrix/key/v2/server/x%2F..%2F..%2F..%2F..%2Fclient` must not reach the keys as client API."""
    s = lab_like(client_allow_ranges=["10.8.0.0/16"])
    for block in servers(proxy_for(s, BOOKWORM).wanted_sites()["/etc/nginx/conf.d/federate-internal.alpha.test.conf"]):
        federation = block.split("location ~ ^/_matrix/(federation|key)/ {")[1]
        assert federation.index('if ($request_uri !~ "^/_matrix/(federation|key)/") {\n            return 400;') \
            < federation.index("allow ")
    client = servers(proxy_for(s, BOOKWORM).wanted_sites()["/etc/nginx/conf.d/federate-alpha.test.conf"])[0]
    assert 'if ($request_uri ~ "^/_matrix/(federation|key)/|^/_synapse/admin") {\n            return 400;' in \
        client.split("location ~ ^(/_matrix|/_synapse/client) {")[1]
    caddyfile = proxy_for(lab_like("caddy"), BOOKWORM).render_caddyfile()
    assert "path /_matrix/federation/*" not in caddyfile and caddyfile.count('{http.request.uri}.startsWith("/_matrix/key/")') == 8


def test_caddy_hardening():
    s = lab_like("caddy", client_allow_ranges=["10.8.0.0/16"])
    caddyfile = proxy_for(s, BOOKWORM).render_caddyfile()
    assert "\tadmin unix//run/caddy/admin.sock\n" in caddyfile.split("\n}\n")[0]
    sites = re.findall(r"^(\S+:(?:443|8448)[^{]*)\{$", caddyfile, re.M)
    assert len(sites) == 4 and caddyfile.count("protocols tls1.2 tls1.3") == 4
    assert caddyfile.count("-Server") == 4 and caddyfile.count(f'Strict-Transport-Security "max-age={HSTS_MAX_AGE}"') == 2
    internal = caddyfile.split("\ninternal.alpha.test:443 {")[1].split("\n}\n")[0]
    assert "remote_ip 10.1.2.11\n" in internal and "not remote_ip 10.1.2.11\n" in internal
    assert "respond `{\"errcode\":\"M_FORBIDDEN\"" in internal
    assert "not remote_ip 10.8.0.0/16\n" in internal  # the client API for its ranges only
    # closed: every federation request is refused, none proxied
    closed = inventory_settings([("h", {"proxy": "caddy", "homeservers": [
        {"server_name": "in.test", "profile": "internal"}]})])["h"]
    site = proxy_for(closed, BOOKWORM).render_caddyfile().split("\nin.test:443 {")[1]
    assert "@federation {" not in site and "@federation_forbidden {" in site and "remote_ip" not in site


def test_internal_profile_hides_profiles_and_each_homeserver_has_its_own_private_ranges():
    s = lab_like(ip_range_whitelist=["10.1.2.0/24"])
    external, internal = (yaml.safe_load(synapse.render_homeserver_yaml(s, hs)) for hs in s.homeservers)
    assert internal["require_auth_for_profile_requests"] is True
    assert internal["limit_profile_requests_to_users_who_share_rooms"] is True
    assert external["require_auth_for_profile_requests"] is False
    assert internal["ip_range_whitelist"] == ["10.1.2.0/24"] and "ip_range_whitelist" not in external
