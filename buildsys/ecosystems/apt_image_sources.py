"""What apt in an image reads from: its sources (one-line and deb822) and the keys that sign them.

An image's ``/etc/apt/sources.list``, ``sources.list.d/*.list`` and
``sources.list.d/*.sources`` (deb822, Ubuntu 24.04's and Debian 12's images'
form) name its archives: Ubuntu's main/universe with -updates and -security,
Debian's, and third-party ones such as NVIDIA's flat CUDA repository. Each is
signed by the keyrings its ``signed-by`` names (paths in the image, or a key
block written into the stanza), or else by every key of ``trusted.gpg`` and
``trusted.gpg.d``: the image's own trust, read from the image, never the
host's. Only ``deb`` entries count (``deb-src`` is source code); an entry with
``Enabled: no`` is skipped; ``trusted=yes`` (no signature check) is refused,
since nothing would then tie a lock to what the archive signed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from debian import deb822

from buildsys.core.errors import LockError

SOURCES = "etc/apt/sources.list"
SOURCES_D = "etc/apt/sources.list.d"
TRUSTED = "etc/apt/trusted.gpg"
TRUSTED_D = "etc/apt/trusted.gpg.d"


@dataclass(frozen=True)
class ImageSource:
    """One archive apt in the image reads: ``uri suite components`` (a flat repository: suite ending in ``/``,
    no components), the keys that must sign it, and where it was written."""

    uri: str
    suite: str
    components: tuple[str, ...]
    keys: tuple[bytes, ...]  # keyrings (binary or armored), each one file's or one stanza's bytes
    key_names: tuple[str, ...]  # where each came from, for messages and the lock
    architectures: tuple[str, ...] = ()  # empty: the image's own
    origin: str = ""  # "etc/apt/sources.list.d/cuda.list:1"

    @property
    def flat(self) -> bool:
        return self.suite.endswith("/") and not self.components


def _base(name: str) -> str:
    """An entry of a folder listing by its own name (a tree lists full paths)."""
    return name.rstrip("/").rsplit("/", 1)[-1]


# A function reading one file of the image (None when absent) and one listing a folder's entries.
_Reader = Callable[[str], bytes | None]
_Children = Callable[[str], Iterable[str]]


class ImageSourcesError(LockError):
    """The image's apt sources cannot be used to lock: names the file and line."""


def read_sources(read: _Reader, children: _Children) -> list[ImageSource]:
    """Every ``deb`` archive of the image, in apt's order (sources.list, then sources.list.d by name)."""
    found: list[ImageSource] = []
    files = [SOURCES] if read(SOURCES) is not None else []
    files += sorted(f"{SOURCES_D}/{n}" for n in map(_base, children(SOURCES_D)) if n.endswith((".list", ".sources")))
    default: tuple[tuple[bytes, ...], tuple[str, ...]] | None = None

    def default_keys() -> tuple[tuple[bytes, ...], tuple[str, ...]]:
        nonlocal default
        if default is None:
            names = ([TRUSTED] if read(TRUSTED) is not None else []) + sorted(
                f"{TRUSTED_D}/{n}" for n in map(_base, children(TRUSTED_D)) if n.endswith((".gpg", ".asc")))
            default = (tuple(read(n) or b"" for n in names), tuple(names))
        return default

    for name in files:
        data = read(name) or b""
        text = data.decode("utf-8", "replace")
        entries = _deb822(text, name) if name.endswith(".sources") else _one_line(text, name)
        for uri, suite, comps, arches, signed_by, origin in entries:
            keys, key_names = _keys(signed_by, origin, read) if signed_by else default_keys()
            if not keys:
                raise ImageSourcesError(f"{origin}: {uri} {suite}: the image has no key to check it with "
                                        "(no signed-by, and nothing in /etc/apt/trusted.gpg.d)",
                                        "install the archive's keyring in the image, or name it with signed-by")
            found.append(ImageSource(uri.rstrip("/") if not suite.endswith("/") else uri, suite, comps, keys,
                                     key_names, arches, origin))
    return found


_Entry = tuple[str, str, tuple[str, ...], tuple[str, ...], str, str]
_OPTIONS = re.compile(r"^\[([^\]]*)\]\s*")


def _one_line(text: str, name: str) -> list[_Entry]:
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        if kind == "deb-src":
            continue
        origin = f"{name}:{n}"
        if kind != "deb":
            raise ImageSourcesError(f"{origin}: {raw.strip()!r} is not a deb line", "fix the image's sources")
        rest = rest.strip()
        options: dict[str, str] = {}
        if m := _OPTIONS.match(rest):
            for opt in m.group(1).split():
                key, _, value = opt.partition("=")
                options[key.lower()] = value
            rest = rest[m.end():]
        words = rest.split()
        if len(words) < 2:
            raise ImageSourcesError(f"{origin}: {raw.strip()!r} names no suite", "fix the image's sources")
        _no_trusted(options.get("trusted", ""), origin)
        arches = tuple(a for a in options.get("arch", "").split(",") if a)
        out.append((words[0], words[1], tuple(words[2:]), arches, options.get("signed-by", ""), origin))
    return out


def _deb822(text: str, name: str) -> list[_Entry]:
    out = []
    for n, stanza in enumerate(deb822.Deb822.iter_paragraphs(text), 1):
        origin = f"{name} (stanza {n})"
        if stanza.get("Enabled", "yes").strip().lower() == "no":
            continue
        if "deb" not in stanza.get("Types", "").split():
            continue
        _no_trusted(stanza.get("Trusted", ""), origin)
        uris, suites = stanza.get("URIs", "").split(), stanza.get("Suites", "").split()
        if not uris or not suites:
            raise ImageSourcesError(f"{origin}: a deb stanza without URIs or Suites", "fix the image's sources")
        comps = tuple(stanza.get("Components", "").split())
        arches = tuple(stanza.get("Architectures", "").split())
        signed_by = stanza.get("Signed-By", "")
        out += [(u, s, comps, arches, signed_by, origin) for u in uris for s in suites]
    return out


def _no_trusted(value: str, origin: str) -> None:
    if value.strip().lower() == "yes":
        raise ImageSourcesError(f"{origin}: the source is marked trusted=yes (apt checks no signature on it)",
                                "sign the repository and name its key with signed-by; a lock must rest on "
                                "what the archive signed")


def _keys(signed_by: str, origin: str, read: _Reader) -> tuple[tuple[bytes, ...], tuple[str, ...]]:
    """signed-by: a key block written in place, or paths of keyrings in the image (fingerprints are refused:
    they select keys from the default keyrings, which buildsys then cannot tell apart)."""
    if "-----BEGIN PGP PUBLIC KEY BLOCK-----" in signed_by:
        block = "\n".join(ln.strip() if ln.strip() != "." else "" for ln in signed_by.splitlines())
        return (block.strip().encode() + b"\n",), (f"{origin} (Signed-By block)",)
    keys, names = [], []
    for item in re.split(r"[\s,]+", signed_by.strip()):
        if not item:
            continue
        if not item.startswith("/"):
            raise ImageSourcesError(f"{origin}: signed-by {item!r} is not a keyring path",
                                    "name the keyring file (signed-by=/usr/share/keyrings/NAME.gpg)")
        data = read(item.lstrip("/"))
        if data is None:
            raise ImageSourcesError(f"{origin}: signed-by names {item}, which the image does not have",
                                    "install the archive's keyring package in a parent layer, or fix the path")
        keys.append(data)
        names.append(item)
    return tuple(keys), tuple(names)


def describe(sources: Iterable[ImageSource]) -> str:
    return "; ".join(f"{s.uri} {s.suite}" + (f" {' '.join(s.components)}" if s.components else "") for s in sources)
