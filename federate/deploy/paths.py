"""Where things live on a managed host (documented in README, 'On the host')."""

LEGACY_USER = "matrix-synapse"  # the one user all homeservers shared before each got its own
VENV = "/opt/matrix-synapse/venv"
CONF_ROOT = "/etc/matrix-synapse"
DATA_ROOT = "/var/lib/matrix-synapse"
UNIT_TEMPLATE = "/etc/systemd/system/matrix-synapse@.service"
UNIT_DROPIN_DIR = f"{UNIT_TEMPLATE}.d"
SANDBOX_DROPIN = f"{UNIT_DROPIN_DIR}/federate-sandbox.conf"  # what each homeserver's process may touch
ACME_WEBROOT = "/var/www/acme-challenge"
PROVIDED_TLS_ROOT = "/etc/federate/tls"
UPLOAD_TMP = "/run/federate"  # root-only scratch for one-shot secret uploads


def conf_dir(server_name: str) -> str:
    return f"{CONF_ROOT}/{server_name}"


def data_dir(server_name: str) -> str:
    return f"{DATA_ROOT}/{server_name}"


def homeserver_yaml(server_name: str) -> str:
    return f"{conf_dir(server_name)}/homeserver.yaml"


def secrets_yaml(server_name: str) -> str:
    return f"{conf_dir(server_name)}/secrets.yaml"


def signing_key(server_name: str) -> str:
    return f"{conf_dir(server_name)}/signing.key"


def unit(server_name: str) -> str:
    return f"matrix-synapse@{server_name}.service"


def identity_dropin(server_name: str) -> str:
    """The unit drop-in naming the homeserver's own OS user."""
    return f"/etc/systemd/system/{unit(server_name)}.d/federate-user.conf"
