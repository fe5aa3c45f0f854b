"""The /.well-known/matrix documents each server name publishes."""

import json

from federate.settings import Delegation, Homeserver


def server_document(hs: Homeserver | Delegation) -> dict:
    # Federation goes to the API host on 443, which the proxy serves for this server name.
    return {"m.server": f"{hs.public_host}:443"}


def client_document(hs: Homeserver | Delegation) -> dict:
    return {"m.homeserver": {"base_url": f"https://{hs.public_host}"}}


def documents_json(hs: Homeserver | Delegation, serve_server: bool = True) -> dict[str, str]:
    """Template context: the JSON bodies (server_json empty when it is not to be served)."""
    return {"server_json": as_json(server_document(hs)) if serve_server else "",
            "client_json": as_json(client_document(hs))}


def as_json(document: dict) -> str:
    """Compact JSON; server names are validated DNS names, so it holds no quote to escape."""
    return json.dumps(document, separators=(",", ":"), sort_keys=True)
