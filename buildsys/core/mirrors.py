"""Mirrors: read an upstream (an apt archive, PyPI, a CRAN repository, a registry) from another place.

A mirror is a URL prefix: a request for a URL under ``upstream`` goes to the
same path under the mirror's URL (an Artifactory or Nexus remote repository,
apt-cacher-ng, aptly, a devpi or PPM proxy, a registry pull-through cache all
keep upstream's layout below a prefix). It is configuration of a machine or a
project, never part of a lock: a lock always names upstream URLs, so a lock
made behind one company's mirror fetches anywhere else, and the reverse.
URLs that a mirror answers with (a file link in an index) are mapped back to
upstream before they are recorded.

Where mirrors are configured, first the strongest (docs/locks.md, "Mirrors"):

1. ``BUILDSYS_MIRRORS``: ``UPSTREAM=MIRROR`` pairs separated by spaces,
   commas or newlines (a CI job's setting);
2. ``mirrors.toml`` in the project folder (a team's shared setting);
3. ``$XDG_CONFIG_HOME/buildsys/mirrors.toml`` (``~/.config/...``; a machine's).

Each file is a ``[mirrors]`` table of ``"UPSTREAM" = "MIRROR"``. For one
URL the longest matching upstream prefix wins; a stronger source's rule for
the same upstream replaces a weaker one's.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from buildsys.core.errors import UsageError

ENV = "BUILDSYS_MIRRORS"
FILE = "mirrors.toml"


class MirrorConfigError(UsageError):
    """A mirror setting is not two http(s) URLs: names where it was written."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}",
                         'write each mirror as "UPSTREAM" = "MIRROR", both http(s) URLs, e.g. '
                         '"http://deb.debian.org/debian" = "https://mirror.example.com/debian" (docs/locks.md)')


@dataclass(frozen=True)
class Mirror:
    upstream: str  # normalized: scheme and host lower case, no trailing slash
    url: str
    source: str  # where it was configured, for messages


def _normal(url: str) -> str:
    parts = urlsplit(url.strip())
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), parts.query, ""))


def _under(url: str, prefix: str) -> str | None:
    """The rest of ``url`` below ``prefix`` ("" or "/..."), None when it is not under it."""
    parts = urlsplit(url)
    normal = urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path, parts.query, parts.fragment))
    if normal == prefix or normal.startswith(prefix + "/") or normal.startswith(prefix + "?"):
        return normal[len(prefix):]
    return None


class Mirrors:
    """The mirror rules in force; empty when none is configured."""

    def __init__(self, rules: Iterable[Mirror] = ()) -> None:
        self.rules = tuple(sorted(rules, key=lambda m: len(m.upstream), reverse=True))
        # (the mirror's normalized prefix, its upstream), longest first: asked for every URL a client reads
        self._back = tuple(sorted(((_normal(m.url), m.upstream) for m in self.rules), key=lambda b: -len(b[0])))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def to_mirror(self, url: str) -> str | None:
        """Where to read ``url`` from instead; None when no mirror covers it."""
        for m in self.rules:
            rest = _under(url, m.upstream)
            if rest is not None:
                return m.url + rest
        return None

    def mirrored(self, url: str) -> str:
        return self.to_mirror(url) or url

    def to_upstream(self, url: str) -> str:
        """A URL a mirror answered with, as upstream's (the URL itself when no mirror has it)."""
        for prefix, upstream in self._back:
            rest = _under(url, prefix)
            if rest is not None:
                return upstream + rest
        return url

    def is_mirror(self, url: str) -> bool:
        """Is ``url`` one a configured mirror serves (trusted by configuration, loopback or not)?"""
        return any(_under(url, prefix) is not None for prefix, _ in self._back)

    def candidates(self, url: str) -> list[str]:
        """Where fetch reads ``url`` from, in order: its mirror, then itself."""
        mirror = self.to_mirror(url)
        return [mirror, url] if mirror and mirror != url else [url]


def _rule(upstream: object, mirror: object, source: str, where: str) -> Mirror:
    for value, what in ((upstream, "upstream"), (mirror, "mirror")):
        if not isinstance(value, str):
            raise MirrorConfigError(where, f"the {what} must be a URL string, not {type(value).__name__}")
        parts = urlsplit(value.strip())
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise MirrorConfigError(where, f"the {what} {value!r} is not an http(s) URL with a host")
        if parts.fragment or parts.query:
            raise MirrorConfigError(where, f"the {what} {value!r} has a query or fragment; give a plain prefix")
    assert isinstance(upstream, str) and isinstance(mirror, str)
    return Mirror(_normal(upstream), mirror.strip().rstrip("/"), source)


def _from_file(path: Path) -> list[Mirror]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise MirrorConfigError(str(path), f"not readable as TOML: {e}") from e
    unknown = sorted(set(data) - {"mirrors"})
    if unknown:
        raise MirrorConfigError(str(path), f"unknown key {unknown[0]!r} (only [mirrors] is read)")
    table = data.get("mirrors", {})
    if not isinstance(table, Mapping):
        raise MirrorConfigError(str(path), "mirrors must be a table of \"UPSTREAM\" = \"MIRROR\"")
    return [_rule(up, url, str(path), f"{path}: mirrors.{up!r}") for up, url in table.items()]


def _from_env(text: str) -> list[Mirror]:
    rules = []
    for pair in (p for p in re.split(r"[\s,]+", text) if p):
        up, sep, url = pair.partition("=")
        if not sep:
            raise MirrorConfigError(f"{ENV}: {pair!r}", "not UPSTREAM=MIRROR")
        rules.append(_rule(up, url, ENV, f"{ENV}: {pair!r}"))
    return rules


def user_file(env: Mapping[str, str] = os.environ) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "buildsys" / FILE


def load(project: Path | None, env: Mapping[str, str] = os.environ) -> Mirrors:
    """The mirrors of this run: the user's file, then the project's, then ``BUILDSYS_MIRRORS`` (strongest)."""
    by_upstream: dict[str, Mirror] = {}
    layers = [_from_file(user_file(env)), _from_file(project / FILE) if project else [],
              _from_env(env.get(ENV, ""))]
    for layer in layers:
        for m in layer:
            by_upstream[m.upstream] = m
    return Mirrors(by_upstream.values())


_active = Mirrors()


def configure(mirrors: Mirrors) -> None:
    """Set the mirrors every client of this process uses (the CLI does, once per command)."""
    global _active
    _active = mirrors


def active() -> Mirrors:
    return _active
