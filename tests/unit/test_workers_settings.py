"""Issue 15: the `workers` setting (validated before any host is touched) and what it renders:
homeserver.yaml, the workers' configs and units, Redis's config and ACL, the nginx routes."""

import re

import pytest
import yaml

from federate.deploy import locks, paths, redis, synapse, workers
from federate.deploy.debian import BOOKWORM
from federate.deploy.proxy import proxy_for
from federate.deploy.proxy.nginx import FEDERATION_READER_PATTERNS
from federate.deploy.system import wanted_packages
from federate.deploy.templating import render
from federate.settings import MANAGED_SYNAPSE_KEYS, SettingsError, host_settings


def data(workers=None, database="postgres", proxy="nginx", homeservers=None):
    hs = {"server_name": "alpha.test"}
    if workers is not None:
        hs["workers"] = workers
    return {"synapse_version": "1.163.2", "proxy": proxy, "firewall": "ufw", "database": database,
            "tls": {"mode": "acme", "acme_directory": "https://acme.test/dir"},
            "homeservers": homeservers or [hs]}


def refused(host_data, field):
    with pytest.raises(SettingsError) as err:
        host_settings("h1", host_data)
    assert err.value.field == field, str(err.value)
    return str(err.value)


def test_none_is_the_default_and_changes_nothing():
    s = host_settings("h1", data())
    hs = s.homeservers[0]
    assert not hs.workers.enabled and hs.workers.names == ()
    config = yaml.safe_load(synapse.render_homeserver_yaml(s, hs))
    assert len(config["listeners"]) == 1
    assert not {"redis", "instance_map", "federation_sender_instances", "worker_replication_secret_path"} & set(config)
    site = proxy_for(s, BOOKWORM).wanted_sites()["/etc/nginx/conf.d/federate-alpha.test.conf"]
    assert "upstream" not in site and "map " not in site and "proxy_pass http://127.0.0.1:8008;" in site
    assert "redis-server" not in wanted_packages(s, proxy_for(s, BOOKWORM))
    assert not workers.wanted(s)


def test_federation_preset_and_explicit_counts():
    hs = host_settings("h1", data({"preset": "federation"})).homeservers[0]
    assert hs.workers.senders == ("federation_sender1",)
    assert hs.workers.readers == (("federation_reader1", 9008), ("federation_reader2", 9009))
    hs = host_settings("h1", data({"preset": "federation", "federation_senders": 0, "federation_readers": 3,
                                   "first_port": 18000})).homeservers[0]
    assert hs.workers.senders == () and hs.workers.ports == (18000, 18001, 18002)


@pytest.mark.parametrize("workers,field,words", [
    ({"preset": "federation", "federation_readers": -1}, "homeservers[0].workers.federation_readers", "at least 0"),
    ({"preset": "federation", "federation_senders": -2}, "homeservers[0].workers.federation_senders", "at least 0"),
    ({"preset": "federation", "federation_readers": 17}, "homeservers[0].workers.federation_readers", "at most 16"),
    ({"federation_readers": 2}, "homeservers[0].workers.federation_readers", "needs preset: federation"),
    ({"first_port": 9000}, "homeservers[0].workers.first_port", "needs preset: federation"),
    ({"preset": "federation", "federation_senders": 0, "federation_readers": 0}, "homeservers[0].workers.preset",
     "preset: none"),
    ({"preset": "full"}, "homeservers[0].workers.preset", "not supported yet"),
    ({"preset": "many"}, "homeservers[0].workers.preset", "must be one of none, federation, full"),
    ({"preset": "federation", "first_port": 8447}, "homeservers[0].workers.first_port", "8448 is used by the proxy or SSH"),
    ({"preset": "federation", "first_port": 65535}, "homeservers[0].workers.first_port", "1024-65535"),
    ({"preset": "federation", "readers": 1}, "homeservers[0].workers.readers", "unknown key"),
])
def test_bad_workers_are_refused_naming_the_field(workers, field, words):
    assert words in refused(data(workers), field)


def test_workers_need_postgres_and_nginx():
    assert "SQLite" in refused(data({"preset": "federation"}, database="sqlite"), "homeservers[0].workers.preset")
    assert "nginx only" in refused(data({"preset": "federation"}, proxy="caddy"), "homeservers[0].workers.preset")


def test_worker_ports_may_not_collide_with_another_homeserver():
    message = refused(data(homeservers=[{"server_name": "alpha.test", "workers": {"preset": "federation"}},
                                        {"server_name": "beta.test", "port": 9009}]),
                      "homeservers[0].workers.first_port")
    assert "9009 is already used by homeservers[1].port" in message
    message = refused(data(homeservers=[{"server_name": "alpha.test", "workers": {"preset": "federation"}},
                                        {"server_name": "beta.test", "workers": {"preset": "federation",
                                                                                 "first_port": 9009}}]),
                      "homeservers[1].workers.first_port")
    assert "alpha.test" in message


def test_escape_hatch_cannot_set_worker_keys():
    for key in ("redis", "instance_map", "federation_sender_instances", "worker_replication_secret"):
        assert key in MANAGED_SYNAPSE_KEYS
        hs = {"server_name": "alpha.test", "synapse_extra": {key: {}}}
        refused(data(homeservers=[hs]), f"homeservers[0].synapse_extra.{key}")


def test_homeserver_yaml_with_workers_replicates_on_unix_sockets_only():
    s = host_settings("h1", data({"preset": "federation"}))
    hs = s.homeservers[0]
    text = synapse.render_homeserver_yaml(s, hs)
    config = yaml.safe_load(text)
    socket = "/var/lib/matrix-synapse/alpha.test/replication.sock"
    assert config["listeners"][1] == {"path": socket, "mode": 0o600, "type": "http", "resources": [{"names": ["replication"]}]}
    assert config["instance_map"] == {"main": {"path": socket}}
    assert config["redis"] == {"enabled": True, "path": "/run/federate-redis/alpha.test/redis.sock",
                               "password_path": "/etc/matrix-synapse/alpha.test/redis.password"}
    assert config["worker_replication_secret_path"] == "/etc/matrix-synapse/alpha.test/replication.secret"
    assert config["federation_sender_instances"] == ["federation_sender1"]
    assert "password:" not in text and "worker_replication_secret:" not in text  # secrets stay on the host
    assert "redis-server" in wanted_packages(s, proxy_for(s, BOOKWORM))


def test_worker_configs_and_units():
    hs = host_settings("h1", data({"preset": "federation"})).homeservers[0]
    reader = yaml.safe_load(workers.render_worker_yaml(hs, "federation_reader2"))
    assert reader == {"worker_app": "synapse.app.generic_worker", "worker_name": "federation_reader2",
                      "worker_listeners": [{"type": "http", "port": 9009, "bind_addresses": ["127.0.0.1"],
                                            "x_forwarded": True, "resources": [{"names": ["federation"]}]}]}
    sender = yaml.safe_load(workers.render_worker_yaml(hs, "federation_sender1"))
    assert "worker_listeners" not in sender
    dropin = workers.render_worker_dropin(hs, "federation_sender1")
    assert "User=synapse_alpha_test" in dropin and "PartOf=matrix-synapse-workers@alpha.test.target" in dropin
    assert "BindReadOnlyPaths=/etc/matrix-synapse/alpha.test\n" in dropin
    assert "--config-path=/etc/matrix-synapse/alpha.test/workers/federation_sender1.yaml" in dropin
    target = workers.render_target_dropin(hs)
    assert target.count("Wants=") == 3
    sandbox = render("federate-sandbox.conf.j2", paths=paths, worker=True)
    main_sandbox = render("federate-sandbox.conf.j2", paths=paths)
    assert "%i" not in sandbox and "ProtectSystem=strict" in sandbox
    same = [line for line in main_sandbox.splitlines() if "=" in line and "%i" not in line
            and not line.startswith(("TemporaryFileSystem", "#"))]
    assert all(line in sandbox.splitlines() for line in same)  # the main process's sandbox


def test_redis_has_no_port_and_one_restricted_user():
    hs = host_settings("h1", data({"preset": "federation"})).homeservers[0]
    conf = redis.render_redis_conf(hs)
    assert "port 0\n" in conf and "unixsocketperm 600\n" in conf and "bind" not in conf
    rules = redis.acl_rules(hs)
    assert "resetchannels &alpha.test &alpha.test/*" in rules and "~cache_v1:*" in rules and "-@admin" in rules
    unit = render("federate-redis@.service.j2", paths=paths, redis_server=redis.REDIS_SERVER)
    assert "PrivateNetwork=yes" in unit and "RestrictAddressFamilies=AF_UNIX" in unit


def test_nginx_routes_exactly_the_documented_federation_endpoints_to_the_readers():
    s = host_settings("h1", data({"preset": "federation"}))
    site = proxy_for(s, BOOKWORM).wanted_sites()["/etc/nginx/conf.d/federate-alpha.test.conf"]
    inbound = re.search(r"upstream federate_synapse_alpha_test_inbound \{(.*?)\}", site, re.S).group(1)
    assert "hash $remote_addr consistent;" in inbound  # by source address, as Synapse's docs require
    assert inbound.count("server 127.0.0.1:") == 2
    mapping = re.search(r"map \$request_uri \$federate_synapse_alpha_test_backend \{(.*?)\n\}", site, re.S).group(1)
    routes = re.findall(r'"~(.*?)" (\S+);', mapping)
    assert routes[0] == ("^/_matrix/federation/v1/send/", "federate_synapse_alpha_test_inbound")
    assert [p for p, _ in routes[1:]] == list(FEDERATION_READER_PATTERNS)
    assert "default 127.0.0.1:8008;" in mapping
    assert site.count("proxy_pass http://$federate_synapse_alpha_test_backend;") == 2  # 443 and 8448
    # the client API still goes to the main process only
    client = site.split("location ~ ^(/_matrix|/_synapse/client)")[1]
    assert "proxy_pass http://127.0.0.1:8008;" in client.split("}")[1]


def test_redis_lock_is_the_plain_lock_plus_the_redis_client():
    for python in ("3.11", "3.13"):
        plain = locks.pins(locks.shipped("1.163.2", python))
        with_redis = locks.pins(locks.shipped("1.163.2", python, redis=True))
        assert set(with_redis) - set(plain) == {"txredisapi", "hiredis"}
        assert all(with_redis[name] == version for name, version in plain.items())


def test_worker_ports_may_not_collide_with_a_metrics_listener():
    message = refused(data(homeservers=[{"server_name": "alpha.test", "metrics": {"port": 9008},
                                         "workers": {"preset": "federation"}}]),
                      "homeservers[0].workers.first_port")
    assert "9008 is already used by homeservers[0].metrics.port" in message
