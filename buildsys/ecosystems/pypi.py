"""The index client, from the host: every file of a project on a simple index, with its sha256.

The index's JSON simple API (PEP 691, with PEP 700 sizes and upload times; the
HTML page of PEP 503 where the index has no JSON) lists every file of each
pinned version with its sha256: what ``pip-compile --generate-hashes`` would
emit (checked equal for six, markupsafe, pyyaml, jinja2, python-dateutil).
pip-compile is not asked to hash: pip-tools 7.6.2 looks for PyPI's JSON API at
``https://pypi.org/<name>/json`` (a 404), then downloads every file of every
pin to hash it (all of numpy's 72 wheels for one lock), and on an index without
that API it always does. The simple API rather than PyPI's per-release JSON
(``/pypi/<name>/<version>/json``) because every index speaks it, and because
that endpoint answered 404 through this workplace's network.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import html.parser
import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from buildsys.core import mirrors, net
from buildsys.core.errors import LockError
from buildsys.core.urlpolicy import local_reason

DEFAULT_INDEX = "https://pypi.org/simple"

_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


class IndexUnreachable(LockError):
    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = url, reason
        super().__init__(f"cannot read {url}: {reason}", "check [pip] index-url and the network, then lock again")


@dataclass(frozen=True)
class IndexFile:
    name: str
    url: str
    sha256: str
    size: int | None
    uploaded: int | None  # seconds since the epoch


def canonical_name(name: str) -> str:
    """packaging's normalized name, as a plain str."""
    return str(canonicalize_name(name))


def release_files(listed: Mapping[str, IndexFile], name: str, version: str) -> dict[str, IndexFile]:
    """The files of one release among a project's files (wheels and sdists, by their names)."""
    try:
        wanted = Version(version)
    except InvalidVersion:
        return {}
    out = {}
    for sha, f in listed.items():
        try:
            n, v = parse_wheel_filename(f.name)[:2] if f.name.endswith(".whl") else parse_sdist_filename(f.name)
        except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
            continue
        if n == canonical_name(name) and v == wanted:
            out[sha] = f
    return out


def index_files_many(index: str, projects: Sequence[str]) -> dict[str, dict[str, IndexFile]]:
    """``index_files`` of each project, 8 at a time, on one client: its connections are kept and its host
    resolved once, not twice a page (a new client per page stalled a lock 12 s on lookups)."""
    with _client(f"{index.rstrip('/')}/") as client, \
            ThreadPoolExecutor(max_workers=8, thread_name_prefix="pip-index") as pool:
        return dict(zip(projects, pool.map(lambda p: index_files(index, p, client), projects), strict=True))


def upstream(url: str) -> str:
    """A file link as upstream's: an index read through a mirror links to the mirror's files."""
    return mirrors.active().to_upstream(url)


def index_files(index: str, project: str, client: net.Client | None = None) -> dict[str, IndexFile]:
    """Every file of a project on a simple index, by sha256: the JSON API (PEP 691, sizes and
    upload times of PEP 700) where the index speaks it, else the HTML page (PEP 503)."""
    url = f"{index.rstrip('/')}/{canonical_name(project)}/"
    body, ctype, final, _ = _request(url, accept=f"{_SIMPLE_JSON}, text/html;q=0.1", client=client)
    out: dict[str, IndexFile] = {}
    if ctype.startswith(_SIMPLE_JSON) or ctype.startswith("application/json"):
        for f in json.loads(body).get("files", []):
            sha = (f.get("hashes") or {}).get("sha256")
            if not sha:
                continue
            size = f.get("size")
            out[sha.lower()] = IndexFile(f["filename"], upstream(urljoin(final, f["url"])), sha.lower(),
                                          int(size) if isinstance(size, int) else None, _iso_time(f.get("upload-time")))
        return out
    parser = _Anchors()
    parser.feed(body.decode(errors="replace"))
    for href, text in parser.links:
        link = urljoin(final, href)
        base, _, frag = link.partition("#")
        base = upstream(base)
        if frag.startswith("sha256="):
            sha = frag.removeprefix("sha256=").lower()
            name = text.strip() or unquote(urlsplit(base).path.rsplit("/", 1)[-1])
            out[sha] = IndexFile(name, base, sha, None, None)
    return out


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text)))
            self._href = None


def _iso_time(value: Any) -> int | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return int(datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def head_file(url: str, sha: str) -> IndexFile:
    """Size and Last-Modified of one file, for indexes that do not list them."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    size = uploaded = None
    with contextlib.suppress(IndexUnreachable):
        _, _, _, headers = _request(url, method="HEAD")
        if headers.get("Content-Length", "").isdigit():
            size = int(headers["Content-Length"])
        if headers.get("Last-Modified"):
            with contextlib.suppress(TypeError, ValueError):
                uploaded = int(email.utils.parsedate_to_datetime(headers["Last-Modified"]).timestamp())
    return IndexFile(name, url.split("#", 1)[0], sha, size, uploaded)


def _client(url: str) -> net.Client:
    """The client for ``url``'s index: the policy on every redirect (a remote index may not lead to this
    machine), a deadline, a bounded page; an index on this machine by the recipe's intent may stay here."""
    return net.Client(net.Policy(local_ok=local_reason(url) is not None), attempts=3)


def _request(url: str, *, accept: str = "*/*", method: str = "GET",
             client: net.Client | None = None) -> tuple[bytes, str, str, Mapping[str, str]]:
    try:
        with contextlib.ExitStack() as stack:
            if client is None:
                client = stack.enter_context(_client(url))
            resp = stack.enter_context(client.send(method, url, headers={"Accept": accept}))
            if resp.status_code >= 400:
                raise IndexUnreachable(url, f"HTTP {resp.status_code}")
            body = resp.read(net.MAX_INDEX, "the index page") if method == "GET" else b""
            return body, resp.headers.get("Content-Type", ""), resp.url, dict(resp.headers)
    except net.NetError as e:
        raise IndexUnreachable(url, e.problem) from e
