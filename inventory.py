# An example inventory for real servers. Copy it, edit it, then run:
#     pyinfra inventory.py deploy.py
# Every key is explained in README.md ("Settings"); defaults are in group_data/all.py.

from pathlib import Path

# The host keys you checked (README, "SSH": ssh-keyscan, then compare the fingerprint with the
# server's console), beside this file; pyinfra would otherwise take any key on first contact.
_KNOWN_HOSTS = str(Path(__file__).resolve().with_name("known_hosts"))

homeservers = [
    (
        "matrix.example.com",  # the SSH address of the server
        {
            "ssh_user": "root",
            # Pin the host key: connect only if it is the one in known_hosts.
            "ssh_known_hosts_file": _KNOWN_HOSTS,
            "ssh_strict_host_key_checking": "yes",
            # New SSH connections are rate limited per source address (ufw `limit`, an nftables
            # meter); addresses that connect often (an admin VPN, a CI runner) can skip the limit:
            # "ssh": {"rate_limit": True, "trusted_ranges": ["198.51.100.0/24", "2001:db8:42::/48"]},
            "homeservers": [
                {
                    # Users get IDs like @alice:example.com; the APIs are served by
                    # matrix.example.com, published through /.well-known/matrix/server.
                    "server_name": "example.com",
                    "public_host": "matrix.example.com",
                    "users": [{"localpart": "admin", "admin": True}],
                },
            ],
            "tls": {
                "mode": "acme",
                "acme_directory": "https://acme-v02.api.letsencrypt.org/directory",
                "email": "hostmaster@example.com",
            },
            # Your own certificates instead of ACME (full chain + key, paths on this machine):
            # "tls": {"mode": "provided", "certificates": {"example.com": {
            #     "cert": "certs/example.com/fullchain.pem", "key": "certs/example.com/privkey.pem"}}},
            # The other choices (defaults: nginx, ufw, postgres):
            # "proxy": "caddy",
            # "firewall": "nftables",
            # "database": "sqlite",
        },
    ),
]
