"""Synapse's federation admin API on this host's loopback, for `federate destinations`: run as root
with the venv's Python (standard library only); prints one JSON document.

argv: TOKEN_FILE PORT list [rooms] [metrics=URL ...]   every destination with its room count (and room ids);
                                                 with metrics URLs, the federation senders' queue too (summed)
      TOKEN_FILE PORT reset DESTINATION   reset_connection: queued events go out now
The token is read here and sent only to 127.0.0.1: it never leaves the host. The metrics listener is
read on this host too (loopback, or its own private address)."""

import json
import sys
import urllib.error
import urllib.parse
import urllib.request

API = "/_synapse/admin/v1/federation/destinations"
PAGE = 100


class ApiError(Exception):
    def __init__(self, status: int, errcode: str, error: str):
        super().__init__(f"{status} {errcode}: {error}")
        self.status, self.errcode, self.error = status, errcode, error


def transport(token: str, port: int):
    """(method, path) -> the answer's JSON; ApiError for an HTTP error."""
    def call(path: str, method: str = "GET") -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                         data=b"{}" if method == "POST" else None,
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                return json.load(reply)
        except urllib.error.HTTPError as error:
            try:
                body = json.load(error)
            except ValueError:
                body = {}
            raise ApiError(error.code, body.get("errcode", ""), body.get("error", error.reason)) from None
    return call


def paginate(call, path: str, key: str) -> list:
    """Every item of an admin API list, page by page (`from`/`limit`, until no `next_token`)."""
    items, start = [], 0
    while True:
        page = call(f"{path}?from={start}&limit={PAGE}")
        items += page.get(key, [])
        if "next_token" not in page:
            return items
        start = int(page["next_token"])


def rooms_path(destination: str) -> str:
    return f"{API}/{urllib.parse.quote(destination, safe='')}/rooms"


def destinations(call, with_room_ids: bool) -> list[dict]:
    found = paginate(call, API, "destinations")
    for entry in found:
        if with_room_ids:
            entry["room_ids"] = [room["room_id"] for room in paginate(call, rooms_path(entry["destination"]), "rooms")]
            entry["rooms"] = len(entry["room_ids"])
        else:  # the count alone: one small page
            entry["rooms"] = call(f"{rooms_path(entry['destination'])}?from=0&limit=1").get("total", 0)
    return found


# The federation sender's queues (gauges summed over destinations), by their Prometheus names.
PENDING = {"pdus": "synapse_federation_transaction_queue_pending_pdus",
           "edus": "synapse_federation_transaction_queue_pending_edus"}


def pending(url: str) -> dict:
    """{"pdus": N, "edus": M} from Synapse's metrics page, or {"error": why}."""
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            text = reply.read().decode()
    except (urllib.error.URLError, OSError) as error:
        return {"error": f"{url}: {getattr(error, 'reason', error)}"}
    found = {key: gauge(text, name) for key, name in PENDING.items()}
    if None in found.values():  # e.g. a federation sender worker, whose own listener has them
        return {"error": f"{url} has no {' or '.join(n for k, n in PENDING.items() if found[k] is None)}"}
    return found


def summed(queues: list) -> dict:
    """The queues of several senders (each federation sender worker has its own share of the
    destinations) added up; the first error when one cannot be read."""
    for queue in queues:
        if "error" in queue:
            return queue
    return {key: sum(queue[key] for queue in queues) for key in PENDING}


def gauge(text: str, name: str):
    """The sum of a metric's samples (one per label set, e.g. server_name); None when it is absent."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.split("{", 1)[0].split(" ", 1)[0] == name]
    return int(sum(values)) if values else None


def reset(call, destination: str) -> dict:
    return call(f"{API}/{urllib.parse.quote(destination, safe='')}/reset_connection", "POST")


def run(argv: list[str]) -> dict:
    token_file, port, action, *rest = argv
    try:
        with open(token_file) as source:
            token = source.read().strip()
    except OSError as error:
        return {"ok": False, "kind": "no-token", "error": f"{token_file}: {error.strerror}"}
    call = transport(token, int(port))
    try:
        if action == "reset":
            return {"ok": True, "reset": reset(call, rest[0])}
        answer = {"ok": True, "destinations": destinations(call, "rooms" in rest)}
        urls = [a.split("=", 1)[1] for a in rest if a.startswith("metrics=")]
        if urls:
            answer["pending"] = summed([pending(url) for url in urls])
        return answer
    except ApiError as error:
        return {"ok": False, "kind": "api", "status": error.status, "errcode": error.errcode, "error": error.error}
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return {"ok": False, "kind": "down", "error": f"127.0.0.1:{port} does not answer ({reason})"}


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1:])))
