"""A CRAN-like repository on loopback, made of real CRAN source tarballs.

Debian's ``r-cran-*`` source packages carry the CRAN tarball as their
``*.orig.tar.*``. This module reads a suite's ``Sources.xz`` (bookworm's unless
told) for their names and sha256, downloads them from deb.debian.org, repacks
the ones Debian repacked (``+dfsg``, ``.tar.xz``) into ``NAME_VERSION.tar.gz``
with one top folder named after the package, and writes ``src/contrib/PACKAGES``
and ``PACKAGES.gz`` from each tarball's own DESCRIPTION, as ``tools::write_PACKAGES``
does. Nothing here is written to look like CRAN by hand.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import lzma
import shutil
import tarfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# Fields tools::write_PACKAGES keeps (a subset is enough for resolution).
FIELDS = ("Package", "Version", "Priority", "Depends", "Imports", "LinkingTo", "Suggests", "Enhances",
          "License", "License_is_FOSS", "License_restricts_use", "OS_type", "Archs", "MD5sum",
          "NeedsCompilation")


class DownloadFailed(RuntimeError):
    pass


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=120) as resp:
            return resp.read()
    except (urllib.error.URLError, OSError) as e:
        raise DownloadFailed(f"cannot download {url}: {getattr(e, 'reason', e)} -- Debian's pool may have "
                             "dropped this file; pick another r-cran-* package in tests/cranrepo.py") from e


def origs(cache: Path, sources: tuple[str, ...], suite: str = SUITE) -> dict[str, tuple[str, str]]:
    """source package -> (pool URL of its orig tarball, sha256), from ``suite``'s Sources.xz."""
    index = cache / ("Sources.xz" if suite == SUITE else f"Sources-{suite}.xz")
    if not index.is_file():
        index.write_bytes(_get(f"{MIRROR}/dists/{suite}/main/source/Sources.xz"))
    found: dict[str, tuple[str, str]] = {}
    for stanza in lzma.decompress(index.read_bytes()).decode().split("\n\n"):
        lines = stanza.splitlines()
        head = dict(ln.split(": ", 1) for ln in lines if ": " in ln and not ln.startswith(" "))
        if head.get("Package") not in sources:
            continue
        start = lines.index("Checksums-Sha256:") + 1
        for ln in lines[start:]:
            if not ln.startswith(" "):
                break
            sha, _, name = ln.split()
            if ".orig.tar." in name:
                found[head["Package"]] = (f"{MIRROR}/{head['Directory']}/{name}", sha)
    missing = set(sources) - set(found)
    if missing:
        raise DownloadFailed(f"{suite}'s Sources.xz has no orig tarball for {sorted(missing)}")
    return found


def _description(tar: tarfile.TarFile) -> tuple[str, str]:
    """(top folder, DESCRIPTION text) of an R source tarball."""
    for m in tar.getmembers():
        parts = m.name.strip("./").split("/")
        if len(parts) == 2 and parts[1] == "DESCRIPTION" and m.isfile():
            f = tar.extractfile(m)
            assert f is not None
            return parts[0], f.read().decode("utf-8", errors="replace")
    raise ValueError("no TOP/DESCRIPTION in the tarball")


def _fields(description: str) -> dict[str, str]:
    out: dict[str, str] = {}
    last = ""
    for ln in description.splitlines():
        if ln[:1] in (" ", "\t") and last:
            out[last] += " " + ln.strip()
        elif ":" in ln:
            last, _, v = ln.partition(":")
            out[last] = v.strip()
    return out


def cran_tarball(raw: bytes) -> tuple[str, str, bytes, dict[str, str]]:
    """(name, version, bytes of NAME_VERSION.tar.gz, DESCRIPTION fields); the CRAN file itself when it is one."""
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        top, desc = _description(tar)
        fields = _fields(desc)
        name = fields["Package"]
        if top == name and raw[:2] == b"\x1f\x8b":
            return name, fields["Version"], raw, fields
        # Repack: one top folder named after the package, gzip with no time or name (deterministic).
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as out:
            for m in sorted(tar.getmembers(), key=lambda m: m.name):
                rel = m.name.strip("./").split("/", 1)
                if rel[0] != top:
                    continue
                m.name = name + ("/" + rel[1] if len(rel) > 1 else "")
                m.uname = m.gname = ""
                out.addfile(m, tar.extractfile(m) if m.isfile() else None)
    return name, fields["Version"], buf.getvalue(), fields


def build(cache: Path, sources: tuple[str, ...], suite: str = SUITE) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """package -> (version, tarball bytes, DESCRIPTION fields) for each Debian source package of ``suite``."""
    out = {}
    for _src, (url, sha) in sorted(origs(cache, sources, suite).items()):
        local = cache / url.rsplit("/", 1)[-1]
        if not local.is_file() or hashlib.sha256(local.read_bytes()).hexdigest() != sha:
            data = _get(url)
            if hashlib.sha256(data).hexdigest() != sha:
                raise DownloadFailed(f"{url}: sha256 is not the {sha} of Sources.xz")
            local.write_bytes(data)
        name, version, tarball, fields = cran_tarball(local.read_bytes())
        out[name] = (version, tarball, fields)
    return out


def write_repo(root: Path, packages: dict[str, tuple[str, bytes, dict[str, str]]],
               archived: tuple[str, ...] = ()) -> None:
    """src/contrib with PACKAGES(.gz) of the current ones; ``archived`` ones only under Archive/NAME/."""
    contrib = root / "src" / "contrib"
    if contrib.exists():
        shutil.rmtree(contrib)
    contrib.mkdir(parents=True)
    stanzas = []
    for name, (version, data, fields) in sorted(packages.items()):
        filename = f"{name}_{version}.tar.gz"
        if name in archived:
            (contrib / "Archive" / name).mkdir(parents=True, exist_ok=True)
            (contrib / "Archive" / name / filename).write_bytes(data)
            continue
        (contrib / filename).write_bytes(data)
        meta = {**fields, "MD5sum": hashlib.md5(data).hexdigest()}
        stanzas.append("\n".join(f"{k}: {meta[k]}" for k in FIELDS if k in meta))
    text = "\n\n".join(stanzas) + "\n"
    (contrib / "PACKAGES").write_text(text)
    (contrib / "PACKAGES.gz").write_bytes(gzip.compress(text.encode(), mtime=0))


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on 127.0.0.1; yields the repository URL."""
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


# ---- crafted repositories (issue 25): what a hostile or broken mirror may serve


def gzip_bomb(inflated: int) -> bytes:
    """A PACKAGES.gz that starts like an index and inflates to ``inflated`` bytes, ~1000x: gzip members
    of 1 MiB of zeros each (~1 KB), one after another, as gzip allows (and R and Python read)."""
    head = gzip.compress(b"Package: bomb\nVersion: 1.0\nDescription: x\n ", mtime=0)
    block = gzip.compress(b"\0" * (1 << 20), compresslevel=9, mtime=0)
    return head + block * (inflated >> 20)


def long_continuations(size: int, line: int = 8) -> str:
    """A PACKAGES of about ``size`` bytes whose stanzas carry long continued Description fields."""
    stanzas = []
    body = "\n".join(" " + "x" * (line - 2) for _ in range(max(1, size // line // 4)))
    for i in range(4):
        stanzas.append(f"Package: pkg{chr(97 + i)}\nVersion: 1.0\nDescription: start\n{body}")
    return "\n\n".join(stanzas) + "\n"


def relabel(tarball: bytes, package: str, version: str) -> bytes:
    """The same tarball (same top folder) whose DESCRIPTION names another package and version."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar, \
            gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as out:
        for m in tar.getmembers():
            data = tar.extractfile(m).read() if m.isfile() else None  # type: ignore[union-attr]
            parts = m.name.strip("./").split("/")
            if data is not None and len(parts) == 2 and parts[1] == "DESCRIPTION":
                lines = [f"Package: {package}" if ln.startswith("Package:") else
                         f"Version: {version}" if ln.startswith("Version:") else ln
                         for ln in data.decode("utf-8", errors="replace").splitlines()]
                data = ("\n".join(lines) + "\n").encode()
                m.size = len(data)
            out.addfile(m, None if data is None else io.BytesIO(data))
    return buf.getvalue()
