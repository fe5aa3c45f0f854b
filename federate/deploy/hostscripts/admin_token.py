"""The federate admin account's access token, written to $OUT (a root-only file): run as root with
the venv's Python, argv = [secrets.yaml, port of the loopback listener].

The account is registered with the shared secret. Its password is derived from that secret, so it is
stored nowhere, and a host whose token file is gone (or a homeserver restored from a backup, whose
database already has the account) logs in again instead. Nothing is printed."""

import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.request

import yaml

LOCALPART = "federate-admin"


def call(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.load(reply)
    except urllib.error.HTTPError as error:  # Synapse's errors are JSON too
        return json.load(error)


def nonce(base: str) -> str:
    for _ in range(30):  # a homeserver restarted a moment ago may not listen yet
        try:
            return call(f"{base}/_synapse/admin/v1/register")["nonce"]
        except urllib.error.URLError:
            time.sleep(1)
    sys.exit(f"{base} does not answer: is the homeserver running?")


def token(secret: str, base: str) -> str:
    password = hmac.new(secret.encode(), b"federate-admin password", hashlib.sha256).hexdigest()
    first = nonce(base)
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    mac.update(b"\x00".join([first.encode(), LOCALPART.encode(), password.encode(), b"admin"]))
    answer = call(f"{base}/_synapse/admin/v1/register", {"nonce": first, "username": LOCALPART, "password": password,
                                                         "admin": True, "mac": mac.hexdigest()})
    if answer.get("errcode") == "M_USER_IN_USE":
        answer = call(f"{base}/_matrix/client/v3/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": LOCALPART},
            "password": password, "initial_device_display_name": "federate destinations"})
    if "access_token" not in answer:
        sys.exit(f"the {LOCALPART} account: {answer.get('errcode')}: {answer.get('error')}")
    return answer["access_token"]


if __name__ == "__main__":
    with open(sys.argv[1]) as secrets:
        shared = yaml.safe_load(secrets)["registration_shared_secret"]
    made = token(shared, f"http://127.0.0.1:{int(sys.argv[2])}")
    with open(os.environ["OUT"], "w") as out:
        out.write(made)
