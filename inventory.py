# An example inventory for real servers. Copy it, edit it, then run:
#     pyinfra inventory.py deploy.py
# Every key is explained in README.md ("Settings"); defaults are in group_data/all.py.

homeservers = [
    (
        "matrix.example.com",  # the SSH address of the server
        {
            "ssh_user": "root",
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
