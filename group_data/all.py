# Overrides for every host of an inventory run from this folder (or with this folder beside it).
# federate's defaults live in the library (federate.settings.DEFAULTS, README "Settings"); set a
# key here to change it for all hosts, or in a group's file (group_data/<group>.py) or in a
# host's data for fewer. pyinfra's precedence applies: host data over group data over all.
#
# synapse_version = "1.163.2"   # pinned; change it to upgrade (the next run upgrades in place)
# proxy = "caddy"               # default nginx
# firewall = "nftables"         # default ufw
# database = "sqlite"           # default postgres
# tls = {"mode": "acme", "email": "hostmaster@example.com"}   # default: Let's Encrypt, no e-mail
# max_upload_size = "100M"      # default 50M
# ssh = {"rate_limit": True, "trusted_ranges": ["198.51.100.0/24"]}   # default: limit on, nobody exempt
