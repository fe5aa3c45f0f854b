"""Rendered files: homeserver.yaml is valid YAML holding no secret; nginx sites route as documented."""

import json

import yaml

from federate.deploy import synapse
from federate.deploy.debian import BOOKWORM, TRIXIE
from federate.deploy.proxy import proxy_for
from federate.settings import host_settings
from federate.deploy.templating import render


def settings(homeservers, **extra):
    return host_settings("h1", {
        "synapse_version": "1.163.2", "proxy": "nginx", "firewall": "ufw", "database": "sqlite",
        "tls": {"mode": "acme", "acme_directory": "https://acme.test/dir"},
        "homeservers": homeservers, **extra,
    })


def test_homeserver_yaml_is_valid_yaml_and_has_no_secret():
    s = settings([{"server_name": "alpha.test", "public_host": "matrix.alpha.test",
                   "synapse_extra": {"room_prejoin_state": {"additional_event_types": ["a: 'b' \"c\" #d"]}}}])
    text = synapse.render_homeserver_yaml(s, s.homeservers[0])
    config = yaml.safe_load(text)
    assert config["server_name"] == "alpha.test"
    assert config["public_baseurl"] == "https://matrix.alpha.test/"
    assert config["room_prejoin_state"]["additional_event_types"] == ["a: 'b' \"c\" #d"]
    for key in synapse.SECRET_KEYS:
        assert key not in config
    listener = config["listeners"][0]
    assert listener["bind_addresses"] == ["127.0.0.1"] and listener["x_forwarded"] is True
    assert listener["resources"][0]["names"] == ["client", "federation"]
    assert "federation_domain_whitelist" not in config  # external: open federation


def test_internal_homeserver_without_partners_exposes_no_federation():
    s = settings([{"server_name": "in.test", "profile": "internal"}])
    config = yaml.safe_load(synapse.render_homeserver_yaml(s, s.homeservers[0]))
    assert config["federation_domain_whitelist"] == []
    assert config["listeners"][0]["resources"][0]["names"] == ["client"]
    site = render("federate-homeserver.conf.j2", **proxy_for(s, BOOKWORM).site_context(s.homeservers[0]))
    assert "8448" not in site


def test_whitelist_keeps_only_whitelisted_key_servers():
    s = settings([{"server_name": "in.test", "profile": "internal", "federation_whitelist": ["p.test"]}],
                 trusted_key_servers=[{"server_name": "p.test"}, {"server_name": "notary.test"}])
    config = yaml.safe_load(synapse.render_homeserver_yaml(s, s.homeservers[0]))
    assert config["trusted_key_servers"] == [{"server_name": "p.test"}]


def test_nginx_site_routes():
    s = settings([{"server_name": "alpha.test", "public_host": "matrix.alpha.test", "port": 8100}])
    site = proxy_for(s, BOOKWORM).wanted_sites()["/etc/nginx/conf.d/federate-alpha.test.conf"]
    assert "server_name alpha.test matrix.alpha.test;" in site
    for port in ("443", "8448"):
        assert f"listen {port} ssl http2;" in site
    assert "http2 on;" not in site
    assert "proxy_pass http://127.0.0.1:8100;" in site  # no URI part after the port
    assert "client_max_body_size 50M;" in site
    server_json = site.split("/.well-known/matrix/server")[1].split("return 200 '")[1].split("'")[0]
    assert json.loads(server_json) == {"m.server": "matrix.alpha.test:443"}
    assert "location ^~ /_synapse/admin" in site


def test_nginx_on_trixie_uses_the_http2_directive():
    """nginx 1.26 (Debian 13) deprecates `listen ... http2`; the same settings render `http2 on;`."""
    s = settings([{"server_name": "alpha.test", "public_host": "matrix.alpha.test"}])
    bookworm = proxy_for(s, BOOKWORM).wanted_sites()["/etc/nginx/conf.d/federate-alpha.test.conf"]
    trixie = proxy_for(s, TRIXIE).wanted_sites()["/etc/nginx/conf.d/federate-alpha.test.conf"]
    assert "http2 on;" in trixie and " http2;" not in trixie
    for port in ("443", "[::]:443", "8448", "[::]:8448"):
        assert f"listen {port} ssl;" in trixie
    # nothing else differs between the releases
    assert trixie.replace("    http2 on;\n", "").replace(" ssl;", " ssl http2;") == bookworm


def test_unit_runs_both_config_files():
    from federate.deploy import paths
    unit = render("matrix-synapse@.service.j2", paths=paths)
    assert "--config-path=/etc/matrix-synapse/%i/homeserver.yaml" in unit
    assert "--config-path=/etc/matrix-synapse/%i/secrets.yaml" in unit
    assert "User=nobody" in unit  # each homeserver's own user comes from its drop-in, never root


def test_every_homeserver_runs_in_a_sandbox_of_its_own_directories():
    from federate.deploy import paths
    sandbox = render("federate-sandbox.conf.j2", paths=paths)
    lines = set(sandbox.splitlines())
    assert {"ProtectSystem=strict", "CapabilityBoundingSet=", "NoNewPrivileges=yes", "PrivateDevices=yes",
            "ProtectProc=invisible", "RestrictNamespaces=yes", "SystemCallFilter=@system-service",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"} <= lines
    # only its own config (read-only) and data (writable) directories exist inside
    assert "TemporaryFileSystem=/etc/matrix-synapse:ro /var/lib/matrix-synapse:ro" in lines
    assert "BindReadOnlyPaths=/etc/matrix-synapse/%i" in lines and "BindPaths=/var/lib/matrix-synapse/%i" in lines
    unit = render("matrix-synapse@.service.j2", paths=paths)
    assert "After=network-online.target postgresql.service" in unit
