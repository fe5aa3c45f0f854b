"""Homeservers taken out of the inventory: which are retired, what the run says, and certbot's
renewals following the sites (facts in, commands out; the lab proves it on a host)."""

from federate.deploy import retired, tls
from federate.settings import host_settings

from test_pyinfra_ext import commands, fact


def settings(database="postgres"):
    return host_settings("h1", {"database": database, "tls": {"mode": "acme", "acme_directory": "https://a.test/d"},
                                "homeservers": [{"server_name": "alpha.test"}]})


def test_a_homeserver_no_longer_in_the_settings_is_retired():
    configured = retired.ConfiguredHomeservers().process([
        "internal.alpha.test https://internal.alpha.test/\n", "alpha.test https://matrix.alpha.test/\n",
        "old.test:8448 'https://matrix.old.test/'\n"])
    assert configured == {"alpha.test": ("alpha.test", "matrix.alpha.test"), "internal.alpha.test": ("internal.alpha.test",),
                          "old.test:8448": ("old.test", "matrix.old.test")}
    assert retired.retired_names(settings(), configured) == ["internal.alpha.test", "old.test:8448"]
    assert retired.retired_names(settings(), {"alpha.test": ()}) == []
    # only names no current site uses: alpha.test stays renewed, whatever else retired
    assert retired.retired_certificates(settings(), configured) == ["internal.alpha.test", "matrix.old.test", "old.test"]


def test_the_run_says_what_is_kept_and_how_to_delete_it():
    message = retired.kept_and_how_to_delete(settings(), "internal.alpha.test")
    for kept in ("/etc/matrix-synapse/internal.alpha.test", "/var/lib/matrix-synapse/internal.alpha.test",
                 "database synapse_internal_alpha_test", "OS user synapse_internal_alpha_test",
                 "/var/backups/federate/internal.alpha.test", "matrix-synapse@internal.alpha.test.service.d",
                 "runuser -u postgres -- dropdb synapse_internal_alpha_test",
                 "runuser -u postgres -- dropuser synapse_internal_alpha_test", "userdel synapse_internal_alpha_test"):
        assert kept in message
    assert "dropdb" not in retired.kept_and_how_to_delete(settings("sqlite"), "internal.alpha.test")


def test_certbot_renews_only_what_the_sites_need():
    state = tls.FederateRenewals().process(["# renewed", "/etc/letsencrypt/renewal/alpha.test.conf",
                                            "/etc/letsencrypt/renewal/old.test.conf", "# parked",
                                            "/etc/letsencrypt/renewal-parked/back.test.conf"])
    assert state == {"renewed": ["alpha.test", "old.test"], "parked": ["back.test"]}
    options = {"wanted": ["alpha.test", "back.test"], "retired": ["old.test"], "reload_command": "systemctl reload nginx"}
    assert commands(tls.renewals, fact(tls.FederateRenewals, state), **options) == [
        "mkdir -p /etc/letsencrypt/renewal-parked && mv /etc/letsencrypt/renewal/old.test.conf "
        "/etc/letsencrypt/renewal-parked/",
        "mv /etc/letsencrypt/renewal-parked/back.test.conf /etc/letsencrypt/renewal/ && certbot renew "
        "--non-interactive --cert-name back.test --deploy-hook 'systemctl reload nginx'"]
    settled = {"renewed": ["alpha.test", "back.test"], "parked": ["old.test"]}
    assert commands(tls.renewals, fact(tls.FederateRenewals, settled), **options) == []
    # a certificate obtained by hand through federate's webroot is no retired homeserver's: left alone
    by_hand = {"renewed": ["alpha.test", "element.test"], "parked": []}
    assert commands(tls.renewals, fact(tls.FederateRenewals, by_hand), **options) == []


def test_a_retired_homeserver_with_workers_names_their_units_too():
    message = retired.kept_and_how_to_delete(settings(), "old.test", {"federation_sender1", "redis", "target"})
    assert "stopped and disabled (its workers and their Redis too), no data deleted" in message
    for unit in ("matrix-synapse@old.test.service.d", "matrix-synapse-workers@old.test.target.d",
                 "federate-redis@old.test.service.d", "matrix-synapse-worker@old.test-federation_sender1.service.d"):
        assert f"/etc/systemd/system/{unit}" in message
    assert "workers" not in retired.kept_and_how_to_delete(settings(), "old.test")
