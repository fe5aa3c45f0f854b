# Defaults for every host. Override any of these in your inventory's host or group data.
# See README.md, "Settings", for every key.

# Synapse from PyPI, pinned: change it to upgrade (the next run upgrades in place).
synapse_version = "1.163.2"

proxy = "nginx"        # the reverse proxy terminating TLS on 443 and 8448; or "caddy"
firewall = "ufw"       # default deny incoming; SSH, 80, 443 and 8448 open; or "nftables"
database = "postgres"  # Debian's PostgreSQL, a role and a database per homeserver; or "sqlite"

# Certificates from an ACME CA with HTTP-01 on port 80 (certbot; caddy uses its own client).
# Set "email" for expiry mail, or use "mode": "provided" with your own files (README, "Settings").
tls = {
    "mode": "acme",
    "acme_directory": "https://acme-v02.api.letsencrypt.org/directory",
}

max_upload_size = "50M"  # Synapse's upload limit; the proxy accepts bodies of the same size
