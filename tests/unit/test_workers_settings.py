"""Issue 15: the `workers` setting (validated before any host is touched) and what it renders:
homeserver.yaml, the workers' configs and units, Redis's config and ACL, the nginx routes."""

import re

import pytest
import yaml

from federate.deploy import locks, paths, redis, synapse, workers
from federate.deploy.debian import BOOKWORM
from federate.deploy.proxy import proxy_for
from federate.deploy.proxy import routes as proxy_routes
from federate.deploy.proxy.routes import FEDERATION_READER_PATTERNS, with_query
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
    ({"federation_readers": 2}, "homeservers[0].workers.federation_readers", "needs preset: federation or full"),
    ({"first_port": 9000}, "homeservers[0].workers.first_port", "needs preset: federation or full"),
    ({"stream_writers": {"typing": 1}}, "homeservers[0].workers.stream_writers.typing", "needs preset"),
    ({"preset": "federation", "federation_senders": 0, "federation_readers": 0}, "homeservers[0].workers.preset",
     "preset: none"),
    ({"preset": "full", "background_workers": 2}, "homeservers[0].workers.background_workers", "at most 1, got 2"),
    ({"preset": "full", "stream_writers": {"typing": 2}}, "homeservers[0].workers.stream_writers.typing",
     "at most 1, got 2"),
    ({"preset": "federation", "stream_writers": {"presence": 3}}, "homeservers[0].workers.stream_writers.presence",
     "at most 1"),
    ({"preset": "full", "client_readers": 17}, "homeservers[0].workers.client_readers", "at most 16"),
    ({"preset": "full", "pushers": -1}, "homeservers[0].workers.pushers", "at least 0"),
    ({"preset": "full", "stream_writers": {"events": 1}}, "homeservers[0].workers.stream_writers.events",
     "unknown key"),
    ({"preset": "full", "first_port": 65530}, "homeservers[0].workers.first_port", "its 10 listeners must fit"),
    ({"preset": "full", "first_port": 8440}, "homeservers[0].workers.first_port", "8448 is used by the proxy or SSH"),
    ({"preset": "many"}, "homeservers[0].workers.preset", "must be one of none, federation, full"),
    ({"preset": "federation", "first_port": 8447}, "homeservers[0].workers.first_port", "8448 is used by the proxy or SSH"),
    ({"preset": "federation", "first_port": 65535}, "homeservers[0].workers.first_port", "1024-65535"),
    ({"preset": "federation", "readers": 1}, "homeservers[0].workers.readers", "unknown key"),
])
def test_bad_workers_are_refused_naming_the_field(workers, field, words):
    assert words in refused(data(workers), field)


def test_workers_need_postgres():
    assert "SQLite" in refused(data({"preset": "full"}, database="sqlite"), "homeservers[0].workers.preset")


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


def test_two_homeservers_with_workers_on_one_host_get_ports_apart_by_default():
    settings = host_settings("h1", data(homeservers=[
        {"server_name": "alpha.test", "workers": {"preset": "full"}},
        {"server_name": "internal.alpha.test", "profile": "internal", "federation_whitelist": ["alpha.test"],
         "workers": {"preset": "federation"}}]))
    first, second = (set(hs.workers.ports) for hs in settings.homeservers)
    assert min(first) == 9008 and min(second) == 9108 and not first & second


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
    assert unit.rstrip().endswith("[Install]\n# enabled per homeserver with workers (started at boot); disabled "
                                  "when its workers are off or it is retired\nWantedBy=multi-user.target")


def test_nginx_routes_exactly_the_documented_federation_endpoints_to_the_readers():
    s = host_settings("h1", data({"preset": "federation"}))
    site = proxy_for(s, BOOKWORM).wanted_sites()["/etc/nginx/conf.d/federate-alpha.test.conf"]
    inbound = re.search(r"upstream federate_synapse_alpha_test_inbound \{(.*?)\}", site, re.S).group(1)
    assert "hash $remote_addr consistent;" in inbound  # by source address, as Synapse's docs require
    assert inbound.count("server 127.0.0.1:") == 2
    mapping = re.search(r"map \$request_uri \$federate_synapse_alpha_test_backend \{(.*?)\n\}", site, re.S).group(1)
    routes = re.findall(r'"~(.*?)" (\S+);', mapping)
    assert routes[0] == ("^/_matrix/federation/v1/send/", "federate_synapse_alpha_test_inbound")
    assert [p for p, _ in routes[1:]] == [with_query(p) for p in FEDERATION_READER_PATTERNS]
    assert {b for _, b in routes[1:]} == {"federate_synapse_alpha_test_federation"}
    assert "default 127.0.0.1:8008;" in mapping
    # 443 and 8448's federation, 443's client API: the client API has no route to a worker but the map's default
    assert site.count("proxy_pass http://$federate_synapse_alpha_test_backend;") == 3
    assert not any(p.startswith("^/_matrix/client") for p, _ in routes)


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


def test_full_preset_counts_and_explicit_overrides():
    w = host_settings("h1", data({"preset": "full"})).homeservers[0].workers
    assert w.names == ("federation_sender1", "federation_reader1", "federation_reader2", "client_reader1",
                       "client_reader2", "media_repository1", "typing_writer1", "to_device_writer1",
                       "account_data_writer1", "receipts_writer1", "presence_writer1", "pusher1", "background_worker1")
    # the federation readers keep the federation preset's ports; the others follow
    assert w.ports == tuple(range(9008, 9018)) and w.readers == (("federation_reader1", 9008), ("federation_reader2", 9009))
    w = host_settings("h1", data({"preset": "full", "client_readers": 0, "pushers": 2, "background_workers": 0,
                                  "stream_writers": {"receipts": 2, "presence": 0}})).homeservers[0].workers
    assert w.writers == {"typing": ["typing_writer1"], "to_device": ["to_device_writer1"],
                         "account_data": ["account_data_writer1"], "receipts": ["receipts_writer1", "receipts_writer2"]}
    assert w.pusher_names == ("pusher1", "pusher2") and w.background_names == () and w.of_kind("client") == ()
    # explicit counts add kinds to the federation preset too
    w = host_settings("h1", data({"preset": "federation", "client_readers": 1})).homeservers[0].workers
    assert w.of_kind("client") == (("client_reader1", 9010),)


def test_full_homeserver_yaml_and_worker_configs():
    s = host_settings("h1", data({"preset": "full"}))
    hs = s.homeservers[0]
    config = yaml.safe_load(synapse.render_homeserver_yaml(s, hs))
    base = "/var/lib/matrix-synapse/alpha.test"
    streams = ("typing", "to_device", "account_data", "receipts", "presence")
    assert config["instance_map"] == {"main": {"path": f"{base}/replication.sock"},
                                      **{f"{s}_writer1": {"path": f"{base}/replication-{s}_writer1.sock"}
                                         for s in streams}}
    assert config["stream_writers"] == {s: [f"{s}_writer1"] for s in streams}
    assert config["pusher_instances"] == ["pusher1"] and config["run_background_tasks_on"] == "background_worker1"
    assert config["enable_media_repo"] is False
    assert config["media_instance_running_background_jobs"] == "media_repository1"
    media = yaml.safe_load(workers.render_worker_yaml(hs, "media_repository1"))
    assert media["worker_app"] == "synapse.app.media_repository"
    assert media["worker_listeners"] == [{"type": "http", "port": 9012, "bind_addresses": ["127.0.0.1"],
                                          "x_forwarded": True, "resources": [{"names": ["media"]}]}]
    writer = yaml.safe_load(workers.render_worker_yaml(hs, "typing_writer1"))
    assert writer["worker_listeners"] == [
        {"type": "http", "port": 9013, "bind_addresses": ["127.0.0.1"], "x_forwarded": True,
         "resources": [{"names": ["client"]}]},
        {"path": f"{base}/replication-typing_writer1.sock", "mode": 0o600, "type": "http",
         "resources": [{"names": ["replication"]}]}]
    reader = yaml.safe_load(workers.render_worker_yaml(hs, "client_reader2"))
    assert reader["worker_listeners"][0]["port"] == 9011 and reader["worker_listeners"][0]["resources"] == [
        {"names": ["client"]}]
    for quiet in ("pusher1", "background_worker1", "federation_sender1"):
        assert yaml.safe_load(workers.render_worker_yaml(hs, quiet)) == {
            "worker_app": "synapse.app.generic_worker", "worker_name": quiet}
    assert workers.render_target_dropin(hs).count("Wants=") == 13
    # every listener on loopback or a Unix socket of the homeserver's own
    for worker in hs.workers.names:
        for listener in yaml.safe_load(workers.render_worker_yaml(hs, worker)).get("worker_listeners", []):
            assert listener.get("bind_addresses") == ["127.0.0.1"] or listener["path"].startswith(base + "/")


# Requests of each kind, and the worker kind Synapse's docs send them to ("main": none).
SAMPLES = {
    "/_matrix/client/v3/rooms/!r:a.test/typing/@u:a.test": "typing",
    "/_matrix/client/v3/sendToDevice/m.room_key/txn1": "to_device",
    "/_matrix/client/v3/user/@u:a.test/account_data/m.direct": "account_data",
    "/_matrix/client/v3/user/@u:a.test/rooms/!r:a.test/tags": "account_data",
    "/_matrix/client/v3/rooms/!r:a.test/receipt/m.read/$e": "receipts",
    "/_matrix/client/v3/rooms/!r:a.test/read_markers": "receipts",
    "/_matrix/client/v3/presence/@u:a.test/status": "presence",
    "/_matrix/media/v3/upload?filename=a.png": "media",
    "/_matrix/client/v1/media/download/a.test/abc": "media",
    "/_matrix/federation/v1/media/download/abc": "media",
    "/_matrix/federation/v1/send/123": "inbound",
    "/_matrix/federation/v1/version": "federation",
    "/_matrix/key/v2/query": "federation",
    "/_matrix/federation/v1/make_join/!r:a.test/@u:b.test?ver=10": "federation",
    "/_matrix/client/v3/sync?since=s1&timeout=30000": "client",
    "/_matrix/client/v3/sync": "client",
    "/_matrix/client/v3/rooms/!r:a.test/send/m.room.message/t1": "client",
    "/_matrix/client/v3/rooms/!r:a.test/members?at=x": "client",
    "/_matrix/client/v3/keys/upload": "client",
    "/_matrix/client/versions": "client",
    "/_matrix/client/v3/login": "client",
    "/_matrix/client/v3/rooms/!r:a.test/messages?dir=b": "main",  # pagination: one process per room
    "/_matrix/client/v3/pushrules/": "main",  # GET only on a worker
    "/_matrix/client/v3/syncx": "main",
    "/_matrix/client/v3/account/whoami?x=1": "client",
    "/_matrix/federation/v1/user/keys/claim": "main",
    "/_synapse/client/password_reset": "main",
}


def _nginx_backend(site: str, uri: str) -> str:
    mapping = re.search(r"map \$request_uri \S+ \{(.*?)\n\}", site, re.S).group(1)
    for pattern, backend in re.findall(r'"~(.*?)" (\S+);', mapping):
        if re.search(pattern, uri):
            return backend.rsplit("_test_", 1)[1]
    return "main"


def test_nginx_routes_each_kind_of_request_to_its_workers():
    s = host_settings("h1", data({"preset": "full"}))
    site = proxy_for(s, BOOKWORM).wanted_sites()["/etc/nginx/conf.d/federate-alpha.test.conf"]
    assert {uri: _nginx_backend(site, uri) for uri in SAMPLES} == SAMPLES
    client = re.search(r"upstream federate_synapse_alpha_test_client \{(.*?)\}", site, re.S).group(1)
    assert "hash $http_authorization$arg_access_token consistent;" in client
    assert re.findall(r"server 127\.0\.0\.1:(\d+);", client) == ["9010", "9011"]
    assert site.count("proxy_pass http://$federate_synapse_alpha_test_backend;") == 3
    # exactly the docs' patterns, each kind's in the docs' order
    routes = proxy_routes.worker_routes(s.homeservers[0])
    assert [r.name for r in routes] == ["typing", "to_device", "account_data", "receipts", "presence", "media",
                                        "inbound", "federation", "client"]
    assert routes[-1].patterns == tuple(map(with_query, proxy_routes.CLIENT_READER_PATTERNS))


def _caddy_matchers(caddyfile: str, site: str) -> dict[str, str]:
    """matcher name -> the Python test of its expression, for the site block that starts with `site`."""
    block = caddyfile.split(f"\n{site} {{\n")[1].split("\n}\n")[0]
    return dict(re.findall(r"\t@(worker_\w+) expression `(.*)`", block))


def _caddy_eval(expression: str, uri: str) -> bool:
    python = re.sub(r'(!?)\{http\.request\.uri\}\.matches\("(.*?)"\)',
                    lambda m: f"{'not ' if m[1] else ''}bool(re.search({m[2]!r}, uri))", expression)
    return eval(python.replace("&&", "and"), {"re": re, "uri": uri})


def test_caddy_routes_each_kind_of_request_to_its_workers_like_nginx():
    s = host_settings("h1", data({"preset": "full"}, proxy="caddy"))
    caddyfile = proxy_for(s, BOOKWORM).render_caddyfile()
    for site in ("alpha.test:443", "alpha.test:8448"):
        matchers = _caddy_matchers(caddyfile, site)
        for uri, kind in SAMPLES.items():
            matching = [name for name, expression in matchers.items() if _caddy_eval(expression, uri)]
            assert matching == [f"worker_{kind}"], (uri, matching)  # exactly one: order does not matter
    assert caddyfile.count("reverse_proxy @worker_client 127.0.0.1:9010 127.0.0.1:9011 {") == 3  # 443: 2 APIs, 8448: 1
    assert caddyfile.count("lb_policy header Authorization") == 3 and caddyfile.count("lb_policy ip_hash") == 3
    assert caddyfile.count("reverse_proxy @worker_main 127.0.0.1:8008\n") == 3
    assert "reverse_proxy 127.0.0.1:8008" not in caddyfile  # nothing unmatched
    assert "\\" not in caddyfile.split("# alpha.test\n")[1]  # no escapes to get wrong in CEL


def test_caddy_without_workers_proxies_everything_to_the_main_process():
    s = host_settings("h1", data(proxy="caddy"))
    caddyfile = proxy_for(s, BOOKWORM).render_caddyfile()
    assert "@worker" not in caddyfile and caddyfile.count("reverse_proxy 127.0.0.1:8008\n") == 3


def test_full_preset_listeners_may_not_take_the_ssh_port_or_another_homeservers():
    host_data = {**data({"preset": "full", "first_port": 2215}), "ssh_port": 2222}
    assert "2222 is used by the proxy or SSH" in refused(host_data, "homeservers[0].workers.first_port")
    # beta's federation readers would take alpha's last stream writer's port
    message = refused(data(homeservers=[{"server_name": "alpha.test", "workers": {"preset": "full"}},
                                        {"server_name": "beta.test", "workers": {"preset": "federation",
                                                                                 "first_port": 9017}}]),
                      "homeservers[1].workers.first_port")
    assert "9017 is already used by homeservers[0].workers (of alpha.test)" in message


def test_with_metrics_each_sender_gets_its_own_metrics_listener_on_loopback():
    hs = host_settings("h1", data({"preset": "federation", "federation_senders": 2})).homeservers[0]
    assert hs.workers.sender_metrics == () and workers.metrics_urls(hs) == []  # metrics off: none
    two = [{"server_name": "alpha.test", "metrics": {}, "workers": {"preset": "federation", "federation_senders": 2}},
           {"server_name": "beta.test", "metrics": {}, "workers": {"preset": "federation", "first_port": 9100}}]
    alpha, beta = host_settings("h1", data(homeservers=two)).homeservers
    # the first free ports after each metrics port (9000, 9001), around every other listener
    assert (alpha.metrics.port, beta.metrics.port) == (9000, 9001)
    assert alpha.workers.sender_metrics == (("federation_sender1", 9002), ("federation_sender2", 9003))
    assert beta.workers.sender_metrics == (("federation_sender1", 9004),)
    assert workers.worker_config(alpha, "federation_sender2")["worker_listeners"] == [
        {"type": "metrics", "port": 9003, "bind_addresses": ["127.0.0.1"], "tls": False}]
    assert "worker_listeners" not in workers.worker_config(
        host_settings("h1", data({"preset": "federation"})).homeservers[0], "federation_sender1")
    assert workers.metrics_urls(alpha) == ["http://127.0.0.1:9002/_synapse/metrics",
                                           "http://127.0.0.1:9003/_synapse/metrics"]
    explicit = {"preset": "federation", "federation_senders": 2, "metrics_first_port": 9100}
    hs = host_settings("h1", data(homeservers=[{"server_name": "alpha.test", "metrics": {}, "workers": explicit}]))
    assert hs.homeservers[0].workers.metrics_ports == (9100, 9101)
    # without sender workers the main process sends: its own listener has the queue
    main_sends = {"server_name": "alpha.test", "metrics": {}, "workers": {"preset": "federation",
                                                                          "federation_senders": 0}}
    hs = host_settings("h1", data(homeservers=[main_sends])).homeservers[0]
    assert workers.metrics_urls(hs) == ["http://127.0.0.1:9000/_synapse/metrics"]


@pytest.mark.parametrize("homeserver,words", [
    ({"workers": {"preset": "federation", "metrics_first_port": 9100}}, "needs metrics on"),
    ({"metrics": {}, "workers": {"preset": "federation", "federation_senders": 0, "metrics_first_port": 9100}},
     "at least one federation sender"),
    ({"workers": {"metrics_first_port": 9100}}, "needs preset: federation"),
    ({"metrics": {}, "workers": {"preset": "federation", "metrics_first_port": 9008}},
     "9008 is already used by homeservers[0].workers (of alpha.test)"),
    ({"metrics": {}, "workers": {"preset": "federation", "metrics_first_port": 9000}},
     "9000 is already used by homeservers[0].metrics.port"),
    ({"metrics": {}, "workers": {"preset": "federation", "federation_senders": 2, "metrics_first_port": 8447}},
     "8448 is already used by the proxy or SSH"),
    ({"metrics": {}, "workers": {"preset": "federation", "metrics_first_port": 80000}}, "1024-65535"),
])
def test_bad_sender_metrics_ports_are_refused_naming_the_field(homeserver, words):
    message = refused(data(homeservers=[{"server_name": "alpha.test", **homeserver}]),
                      "homeservers[0].workers.metrics_first_port")
    assert words in message, message


def test_worker_files_on_the_host_retired_homeservers_included():
    found = workers.WorkerFiles().process(["alpha.test federation_sender1", "alpha.test redis", "alpha.test target",
                                           "old.test federation_reader1", ""])
    assert found == {"alpha.test": {"federation_sender1", "redis", "target"}, "old.test": {"federation_reader1"}}
    command = workers.WorkerFiles().command()
    assert "/etc/matrix-synapse/*/" in command and 'matrix-synapse-workers@"$n".target.d' in command
