"""What the controller already uses for packages: apt sources and pip indexes.

Everything here is read from the controller at run time, so no registry host name is ever
written into the repository. The parsing functions are pure (text in, data out) for unit tests.
"""

from __future__ import annotations

import configparser
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

APT_SOURCES_LIST = Path("/etc/apt/sources.list")
APT_SOURCES_DIR = Path("/etc/apt/sources.list.d")


@dataclass(frozen=True)
class AptSource:
    uri: str
    suite: str
    components: tuple[str, ...]

    def one_line(self) -> str:
        """The source as a one-line `deb` entry (the form mmdebstrap accepts as a mirror)."""
        return " ".join(["deb", self.uri, self.suite, *self.components])

    @property
    def host(self) -> str:
        return urlsplit(self.uri).hostname or ""


def parse_one_line_sources(text: str) -> list[AptSource]:
    """`deb [options] URI SUITE COMPONENT...` lines; deb-src and comments are skipped."""
    sources = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        words = line.split()[1:]
        if words and words[0].startswith("["):  # options block, possibly spanning words
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 2:
            sources.append(AptSource(words[0], words[1], tuple(words[2:])))
    return sources


def parse_deb822_sources(text: str) -> list[AptSource]:
    """Stanzas of a `.sources` file; stanzas without Types: deb or with Enabled: no are skipped."""
    sources = []
    for stanza in _deb822_stanzas(text):
        if "deb" not in stanza.get("types", "").split():
            continue
        if stanza.get("enabled", "yes").lower() == "no":
            continue
        components = tuple(stanza.get("components", "").split())
        for uri in stanza.get("uris", "").split():
            for suite in stanza.get("suites", "").split():
                sources.append(AptSource(uri, suite, components))
    return sources


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas, current, key = [], {}, None
    for raw in text.splitlines() + [""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                stanzas.append(current)
            current, key = {}, None
        elif raw[0] in " \t" and key:  # continuation line
            current[key] += " " + raw.strip()
        elif ":" in raw:
            key, value = raw.split(":", 1)
            key = key.strip().lower()
            current[key] = value.strip()
    return stanzas


def controller_apt_sources() -> list[AptSource]:
    """All enabled apt sources of the controller (sources.list, *.list, *.sources)."""
    sources = []
    if APT_SOURCES_LIST.exists():
        sources += parse_one_line_sources(APT_SOURCES_LIST.read_text())
    if APT_SOURCES_DIR.is_dir():
        for path in sorted(APT_SOURCES_DIR.iterdir()):
            if path.suffix == ".list":
                sources += parse_one_line_sources(path.read_text())
            elif path.suffix == ".sources":
                sources += parse_deb822_sources(path.read_text())
    return sources


# The suites of one Debian release a lab host gets: the release itself, its updates and its
# security archive (backports and third-party suites stay with the controller).
RELEASE_SUITE_SUFFIXES = ("", "-updates", "-security")


def release_sources(sources: list[AptSource], release: str) -> list[AptSource]:
    """The sources for one Debian release (`bookworm`, `bookworm-updates`, `bookworm-security`)."""
    return [s for s in sources if s.suite in {release + suffix for suffix in RELEASE_SUITE_SUFFIXES}]


def sources_for_release(sources: list[AptSource], release: str, controller_release: str) -> list[AptSource]:
    """Sources for a lab host of `release`, whatever release the controller runs.

    The controller's own suites name the mirrors it uses; for another release the same mirrors
    serve that release's suites, so the suite names are swapped and nothing else changes.
    """
    own = release_sources(sources, release)
    if own:
        return own
    derived = []
    for source in release_sources(sources, controller_release):
        suffix = source.suite[len(controller_release):]
        derived.append(AptSource(source.uri, release + suffix, source.components))
    return derived


def controller_release() -> str | None:
    """The controller's Debian codename (VERSION_CODENAME of /etc/os-release)."""
    try:
        return platform.freedesktop_os_release().get("VERSION_CODENAME")
    except OSError:
        return None


# --- pip ---------------------------------------------------------------------------------------

def pip_config_files() -> list[Path]:
    """pip's configuration files in its own order (global, user, then $PIP_CONFIG_FILE)."""
    home = Path.home()
    xdg_dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs] + [Path("/etc/pip.conf")]
    files += [home / ".pip" / "pip.conf", home / ".config" / "pip" / "pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    return [f for f in files if f.is_file()]


def parse_pip_indexes(texts: list[str], env: dict[str, str]) -> tuple[str | None, list[str]]:
    """(index-url, extra-index-urls) from pip config texts (later wins) and PIP_* variables."""
    index_url, extra = None, []
    for text in texts:
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(text)
        for section in ("global", "install", "download"):
            if parser.has_option(section, "index-url"):
                index_url = parser.get(section, "index-url").strip()
            if parser.has_option(section, "extra-index-url"):
                extra = parser.get(section, "extra-index-url").split()
    index_url = env.get("PIP_INDEX_URL", index_url)
    if env.get("PIP_EXTRA_INDEX_URL"):
        extra = env["PIP_EXTRA_INDEX_URL"].split()
    return index_url, extra


def network_urls(urls: list[str]) -> list[str]:
    """Only http(s) URLs: file:// indexes of the controller mean nothing inside a host."""
    return [u for u in urls if urlsplit(u).scheme in ("http", "https")]


def pip_default_index_hosts() -> list[str]:
    """The host names of pip's default index, asked from pip itself (never written down here)."""
    code = ("from pip._internal.models.index import PyPI as P;"
            "print(P.netloc); print(P.file_storage_domain)")
    for python in (sys.executable, "python3"):
        try:
            out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if out.returncode == 0:
            return out.stdout.split()
    raise RuntimeError("cannot ask pip for its default index (is pip installed?)")


@dataclass(frozen=True)
class PipIndexes:
    index_url: str | None
    extra_index_urls: tuple[str, ...]


def controller_pip_indexes() -> PipIndexes:
    texts = [p.read_text() for p in pip_config_files()]
    index_url, extra = parse_pip_indexes(texts, dict(os.environ))
    index = (network_urls([index_url]) or [None])[0] if index_url else None
    return PipIndexes(index, tuple(network_urls(extra)))


def allowed_hosts(apt: list[AptSource], pip: PipIndexes, pip_default_hosts: list[str]) -> list[str]:
    """Host names the lab's forward proxy lets through: apt mirrors plus pip indexes.

    When the controller configures no network index-url, pip uses its default index, whose
    pages and files live on the hosts pip itself names.
    """
    hosts = {s.host for s in apt}
    hosts |= {urlsplit(u).hostname or "" for u in pip.extra_index_urls}
    if pip.index_url:
        hosts.add(urlsplit(pip.index_url).hostname or "")
    else:
        hosts |= set(pip_default_hosts)
    return sorted(h for h in hosts if h)
