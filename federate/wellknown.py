"""The /.well-known/matrix documents each server name publishes."""

import json

from federate.settings import Homeserver


def server_document(hs: Homeserver) -> dict:
    # Federation goes to the API host on 443, which the proxy serves for this server name.
    return {"m.server": f"{hs.public_host}:443"}


def client_document(hs: Homeserver) -> dict:
    return {"m.homeserver": {"base_url": f"https://{hs.public_host}"}}


def as_json(document: dict) -> str:
    """Compact JSON; server names are validated DNS names, so it holds no quote to escape."""
    return json.dumps(document, separators=(",", ":"), sort_keys=True)
