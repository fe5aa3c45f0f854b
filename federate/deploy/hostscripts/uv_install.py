"""Install into Synapse's venv with uv, from the index the host's pip uses.

Usage: VENV/bin/python uv_install.py UV_DIR UV_VERSION UV_LOCK_TEXT -- UV-PIP-INSTALL-ARGUMENTS...

uv itself is installed first when UV_DIR/bin/uv is missing or another version: by the venv's pip,
from UV_LOCK_TEXT (pinned and hashed), into a new folder renamed over the old one, so a cut run
leaves no half of it. uv does not read pip's configuration: the settings pip would use for this
install (its config files and PIP_* variables, as `pip config list` shows them) are handed to uv
as its environment, so nothing of them (an index's password) passes through the controller or a
command line.
"""

import ast
import os
import shutil
import subprocess
import sys
import tempfile

# pip's option -> uv's variable; a list value is joined with the separator uv expects.
URL_SETTINGS = {
    "index-url": ("UV_INDEX_URL", None),
    "extra-index-url": ("UV_EXTRA_INDEX_URL", " "),
    "find-links": ("UV_FIND_LINKS", ","),
    "trusted-host": ("UV_INSECURE_HOST", " "),
    "cert": ("SSL_CERT_FILE", None),
    "client-cert": ("SSL_CLIENT_CERT", None),
    "timeout": ("UV_HTTP_TIMEOUT", None),
    "default-timeout": ("UV_HTTP_TIMEOUT", None),
    "retries": ("UV_HTTP_RETRIES", None),
}
TRUE = {"1", "true", "yes", "on"}


def pip_settings(listing: str) -> dict:
    """{option: value} as pip applies them to `pip install`: [global], then [install], then PIP_*
    variables (`:env:`), from the `key='value'` lines of `pip config list`."""
    by_section = {}
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        section, _, option = key.rpartition(".")
        if section in ("global", "install", ":env:") and value:
            by_section.setdefault(section, {})[option] = ast.literal_eval(value)
    settings = {}
    for section in ("global", "install", ":env:"):
        settings.update(by_section.get(section, {}))
    return settings


def uv_environment(settings: dict) -> tuple:
    """(the variables that tell uv what pip's settings tell pip, uv's own extra arguments)."""
    env, arguments = {}, []
    for option, value in settings.items():
        if option in URL_SETTINGS:
            name, separator = URL_SETTINGS[option]
            env[name] = separator.join(value.split()) if separator else value.strip()
        elif option == "proxy" and value.strip():
            env.update({name: value.strip() for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")})
        elif option == "no-index" and value.strip().lower() in TRUE:
            arguments.append("--no-index")
    return env, arguments


def uv_ready(uv: str, version: str) -> bool:
    try:
        found = subprocess.run([uv, "--version"], capture_output=True, text=True, timeout=60).stdout.split()
    except OSError:
        return False
    return found[:2] == ["uv", version]


def install_uv(uv_dir: str, version: str, lock: str) -> str:
    uv = os.path.join(uv_dir, "bin", "uv")
    if uv_ready(uv, version):
        return uv
    new = uv_dir + ".new"
    shutil.rmtree(new, ignore_errors=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as requirements:
        requirements.write(lock)
        requirements.flush()
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--require-hashes", "--no-deps", "--only-binary", ":all:", "--target", new,
                        "-r", requirements.name], check=True)
    shutil.rmtree(uv_dir, ignore_errors=True)
    os.rename(new, uv_dir)
    return uv


def main(uv_dir: str, version: str, lock: str, *install: str) -> None:
    # pip's settings read while uv is installed (each pip start takes a second of CPU)
    config = subprocess.Popen([sys.executable, "-m", "pip", "config", "list"], stdout=subprocess.PIPE, text=True)
    uv = install_uv(uv_dir, version, lock)
    listing = config.communicate()[0]
    if config.returncode != 0:
        raise SystemExit(f"pip config list failed ({config.returncode})")
    env, arguments = uv_environment(pip_settings(listing))
    # uv's cache for this run on disk (/tmp may be memory), where it can usually hard-link into the venv
    os.execve(uv, [uv, "pip", "install", *arguments, *install], {**os.environ, "TMPDIR": "/var/tmp", **env})


if __name__ == "__main__":
    separator = sys.argv.index("--")
    main(*sys.argv[1:separator], *sys.argv[separator + 1:])
