"""Where things live on a managed host (documented in README, 'On the host')."""

LEGACY_USER = "matrix-synapse"  # the one user all homeservers shared before each got its own
VENV = "/opt/matrix-synapse/venv"
UV = "/opt/matrix-synapse/uv"  # the pinned uv that installs the venv (root's)
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


# --- workers and Redis (README, "Workers"): only on hosts where a homeserver runs workers ---------
WORKER_UNIT_TEMPLATE = "/etc/systemd/system/matrix-synapse-worker@.service"
WORKER_SANDBOX_DROPIN = f"{WORKER_UNIT_TEMPLATE}.d/federate-sandbox.conf"
WORKERS_TARGET_TEMPLATE = "/etc/systemd/system/matrix-synapse-workers@.target"
REDIS_UNIT_TEMPLATE = "/etc/systemd/system/federate-redis@.service"
REDIS_RUN_ROOT = "/run/federate-redis"


def worker_unit(server_name: str, worker: str) -> str:
    return f"matrix-synapse-worker@{server_name}-{worker}.service"


def worker_dropin(server_name: str, worker: str) -> str:
    """The drop-in naming the worker's homeserver, OS user, directories and config."""
    return f"/etc/systemd/system/{worker_unit(server_name, worker)}.d/federate-worker.conf"


def workers_target(server_name: str) -> str:
    return f"matrix-synapse-workers@{server_name}.target"


def workers_target_dropin(server_name: str) -> str:
    return f"/etc/systemd/system/{workers_target(server_name)}.d/federate-workers.conf"


def workers_dir(server_name: str) -> str:
    return f"{conf_dir(server_name)}/workers"


def worker_yaml(server_name: str, worker: str) -> str:
    return f"{workers_dir(server_name)}/{worker}.yaml"


def replication_socket(server_name: str) -> str:
    """The main process's replication listener: a Unix socket in its own (0700) data directory."""
    return f"{data_dir(server_name)}/replication.sock"


def worker_replication_socket(server_name: str, worker: str) -> str:
    """A stream writer's replication listener (instance_map), beside the main process's."""
    return f"{data_dir(server_name)}/replication-{worker}.sock"


def replication_secret(server_name: str) -> str:
    return f"{conf_dir(server_name)}/replication.secret"


def redis_unit(server_name: str) -> str:
    return f"federate-redis@{server_name}.service"


def redis_dropin(server_name: str) -> str:
    return f"/etc/systemd/system/{redis_unit(server_name)}.d/federate-user.conf"


def redis_conf(server_name: str) -> str:
    return f"{conf_dir(server_name)}/redis.conf"


def redis_acl(server_name: str) -> str:
    return f"{conf_dir(server_name)}/redis.acl"


def redis_password(server_name: str) -> str:
    return f"{conf_dir(server_name)}/redis.password"


def redis_socket(server_name: str) -> str:
    return f"{REDIS_RUN_ROOT}/{server_name}/redis.sock"
