"""The one HTTP client: every network read and write of buildsys goes through ``Client``.

What it guarantees, for every URL it follows (the first one, each redirect,
a token realm, an upload ``Location``) and not only the first:

- **Policy per hop.** Only ``http``/``https``; a redirect anywhere else
  (``file:``, ``ftp:``) is a permanent ``URLRefused``, never retried as a
  network blip. A client for registries speaks HTTPS except to loopback or to
  a host the user named with ``--insecure``; a client for downloads refuses
  this machine (loopback, link-local, ``file:``) unless the start was there
  on purpose (``urlpolicy``). Redirects are followed here, by hand, so that
  each hop is judged and its headers decided afresh.
- **Origin-bound credentials.** A ``Credential`` belongs to one origin
  (scheme, host, port). It is sent only to that origin, and only over HTTPS
  or to loopback: never to a redirect target or an upload ``Location`` on
  another origin, never in clear text to a host that is not this machine.
- **Bounds.** A body is read through ``Response.read``/``stream``/``reader``
  with a byte limit (documents: ``MAX_DOCUMENT``; blobs: their declared size,
  stopped at one byte more) and a deadline for the whole request, not only
  per read: ``DEADLINE`` seconds plus one second per ``MIN_RATE`` bytes
  received. It runs from the first connect, through every redirect, the
  status lines and headers (each read of them waits at most until the
  deadline: ``_paced_adapter``) to the last byte of the body. A server that
  drips a byte every few seconds, in its headers or its body, fails after
  about ``DEADLINE`` seconds; one that sends fast is never cut short.
- **Retries.** Connection errors, 5xx, 408 and 429 are retried with
  exponential backoff; every other answer is returned to the caller, who
  knows what it means.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast
from urllib.parse import urljoin, urlsplit

from buildsys import __version__
from buildsys.core import mirrors
from buildsys.core.errors import BuildsysError
from buildsys.core.urlpolicy import LOCAL_NAMES, local_reason

if TYPE_CHECKING:
    import http.client
    import socket

    import requests
    import requests.adapters
    import urllib3.exceptions


def _load_requests() -> None:
    """Import requests on the first ``Client`` (~90 ms): the many commands that import this module and
    never talk to the network (``lock --check``, a no-op ``build``) do not pay for it. Every use of
    ``requests``/``urllib3`` below runs on a ``Client`` or its ``Response``, so after this."""
    global requests, urllib3
    import requests
    import urllib3.exceptions

USER_AGENT = f"buildsys/{__version__}"
# containerd's limit for manifests, indexes and configs: a real one is a few KiB
# (a 200-layer manifest is ~40 KiB); a larger document is refused, not held in memory.
MAX_DOCUMENT = 4 << 20
# Package indexes (a CRAN PACKAGES file is ~12 MB, PyPI's largest simple JSON pages a few MB).
MAX_INDEX = 64 << 20
# A request's deadline: DEADLINE seconds, plus one second per MIN_RATE bytes received.
# 60 s covers a slow TLS handshake and a registry's cold start; 32 KiB/s is slower
# than any working link, so only a stalled or dripping server reaches it.
DEADLINE = 60.0
MIN_RATE = 32 << 10
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 30.0  # between two bytes; the deadline bounds the whole
MAX_REDIRECTS = 10
# Connections kept per host: a client may serve several threads (fetch shares one registry client among
# its -j downloads); one over this many is closed after use, with a warning from urllib3 on stderr.
POOL_SIZE = 32
CHUNK = 1 << 16
# How long a policy trusts its answer to "does this host resolve to this machine?" (``Policy._local_reason``).
RESOLVE_TTL = 60.0
_REDIRECTS = (301, 302, 303, 307, 308)
_RETRY_STATUS = (408, 429)


class NetError(BuildsysError):
    """A network request failed; ``transient`` says whether trying again may help. Names the URL."""

    transient = False

    def __init__(self, url: str, problem: str, hint: str | None = None) -> None:
        self.url, self.problem = url, problem
        super().__init__(f"{url}: {problem}", hint)


class URLRefused(NetError):
    """A URL (first, redirect, realm or Location) that the policy forbids: permanent."""

    def __init__(self, url: str, reason: str, hint: str | None = None) -> None:
        self.reason = reason
        super().__init__(url, f"refused: {reason}", hint or "buildsys follows only http(s) URLs that its policy "
                         "allows (docs/trust.md); pin the final URL, or ask the server's owner")


class DeadlineExceeded(NetError):
    """The request's deadline passed: before the headers were all in (``received`` 0), or during the body."""

    transient = True

    def __init__(self, url: str, seconds: float, received: int, *, deadline: float = DEADLINE,
                 min_rate: float = MIN_RATE, headers: bool = False) -> None:
        self.seconds, self.received = seconds, received
        what = "no complete status line and headers" if headers else f"{received} bytes"
        super().__init__(url, f"ran out of time: {what} in {seconds:.1f} s (the deadline is "
                         f"{deadline:g} s plus 1 s per {int(min_rate) >> 10} KiB received)",
                         "the server is stalled or far too slow; try again later or use another mirror")


class TooLarge(NetError):
    def __init__(self, url: str, what: str, limit: int, declared: int | None = None) -> None:
        self.what, self.limit, self.declared = what, limit, declared
        how = f"declares {declared} bytes, refused before reading" if declared is not None \
            else f"stopped reading at {limit + 1}"
        super().__init__(url, f"{what} is larger than {limit} bytes ({how})",
                         "the server sends more than it declared or than buildsys accepts; it is damaged or "
                         "hostile: do not use it")


class Unreachable(NetError):
    transient = True

    def __init__(self, url: str, detail: str, attempts: int) -> None:
        self.detail, self.attempts = detail, attempts
        super().__init__(url, f"unreachable or failing after {attempts} attempt(s): {detail}",
                         "check the network and that the server answers, then try again")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (``NAME``, ``NAME:PORT``, ``[V6]:PORT``) is this machine, from its text alone."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]").rstrip(".").lower()
    if name in LOCAL_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the scheme's default port: what a credential is bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def netloc(url: str) -> str:
    return urlsplit(url).netloc.lower()


@dataclass(frozen=True)
class Credential:
    """An ``Authorization`` header value and the one origin it belongs to."""

    origin: tuple[str, str, int]
    header: str

    @classmethod
    def for_url(cls, url: str, header: str) -> Credential:
        return cls(origin(url), header)


@dataclass(frozen=True)
class Policy:
    """Which URLs a client may follow and where credentials may go.

    ``https_only``: plain http only to loopback or to a host in ``insecure``
    (registries). ``local_ok``: this machine may be read (a loopback registry,
    a ``[[files]]`` entry with ``local = true``); otherwise every hop that
    leads here is refused. ``loopback`` decides what counts as this machine
    for the clear-text rules; tests inject one to play a remote host on
    loopback.
    """

    https_only: bool = False
    local_ok: bool = False
    insecure: frozenset[str] = frozenset()
    loopback: Callable[[str], bool] = field(default=is_loopback)
    # host -> (when, why it is local or None): a client reading many pages of one index resolves its host
    # once a minute, not once a page (measured: 12 of a 40 s lock were lookups, 8 threads timing out together);
    # threads asking at once wait for the one lookup.
    _resolved: dict[str, tuple[float, str | None]] = field(default_factory=dict, compare=False, repr=False)
    _resolving: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def check(self, url: str, *, mirror: bool = False) -> None:
        """Refuse a hop the policy forbids; ``mirror``: a configured mirror's URL, which may be on this
        machine or the local network by the user's own configuration."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise URLRefused(url, f"a {scheme or 'scheme-less'} URL (only http and https are followed)")
        if not parts.hostname:
            raise URLRefused(url, "a URL without a host")
        if not self.local_ok and not mirror and (reason := self._local_reason(url)):
            raise URLRefused(url, reason, "only a source on this machine by intent (a loopback registry, "
                             "a [[files]] entry with local = true) may lead here")
        if self.https_only and scheme == "http" and not self.loopback(parts.netloc) \
                and parts.netloc.lower() not in self.insecure and not mirror:
            raise URLRefused(url, f"plain http to {parts.netloc}, which is not this machine",
                             "registries are spoken to over HTTPS, except on loopback or with --insecure "
                             "for that registry (docs/shipping.md)")

    def _local_reason(self, url: str) -> str | None:
        host = (urlsplit(url).hostname or "").lower()
        with self._resolving:
            hit = self._resolved.get(host)
            if hit is None or time.monotonic() - hit[0] > RESOLVE_TTL:
                hit = self._resolved[host] = (time.monotonic(), local_reason(url, resolve=True))
            return hit[1]

    def carries_credentials(self, url: str) -> bool:
        """Credentials travel only encrypted, or to this machine."""
        parts = urlsplit(url)
        return parts.scheme.lower() == "https" or self.loopback(parts.netloc)


Body = bytes | Path | None


class Response:
    """An answer whose body is read only through bounded, deadline-checked reads."""

    def __init__(self, resp: requests.Response, started: float, deadline: float, min_rate: float) -> None:
        self._resp = resp
        self.status_code = resp.status_code
        self.reason = resp.reason or ""
        self.headers: Mapping[str, str] = resp.headers
        # As upstream's when a mirror answered (core/mirrors): what callers record or resolve links against.
        self.url = mirrors.active().to_upstream(resp.url)
        self._started, self._deadline, self._min_rate = started, deadline, min_rate
        self.received = 0

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._resp.close()

    @property
    def declared_length(self) -> int | None:
        value = self.headers.get("Content-Length", "")
        return int(value) if value.isdigit() else None

    def _check_time(self) -> None:
        elapsed = time.monotonic() - self._started
        if elapsed > self._deadline + self.received / self._min_rate:
            raise DeadlineExceeded(self.url, elapsed, self.received, deadline=self._deadline,
                                   min_rate=self._min_rate)

    def chunks(self, limit: int | None, what: str) -> Iterator[bytes]:
        """The body, chunk by chunk: at most ``limit`` bytes (more is ``TooLarge``), within the deadline."""
        raw = self._resp.raw
        while True:
            self._check_time()
            want = CHUNK if limit is None else min(CHUNK, limit + 1 - self.received)
            try:
                # The bytes as sent: a .tar.gz served with Content-Encoding: gzip (as some servers do
                # despite Accept-Encoding: identity) must keep its locked sha256, as pip's downloads do.
                chunk = raw.read1(max(want, 1), decode_content=False)
            except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as e:
                if isinstance(e, urllib3.exceptions.ReadTimeoutError):
                    raise DeadlineExceeded(self.url, time.monotonic() - self._started, self.received,
                                           deadline=self._deadline, min_rate=self._min_rate) from e
                raise Interrupted(self.url, _short(e), self.received) from e
            if not chunk:
                return
            self.received += len(chunk)
            if limit is not None and self.received > limit:
                raise TooLarge(self.url, what, limit)
            yield chunk

    def read(self, limit: int, what: str) -> bytes:
        """The whole body, refused beyond ``limit`` bytes."""
        declared = self.declared_length
        if declared is not None and declared > limit:
            raise TooLarge(self.url, what, limit, declared)
        return b"".join(self.chunks(limit, what))

    def stream(self, write: Callable[[bytes], object], limit: int | None, what: str) -> int:
        """Each chunk to ``write`` (its own errors pass through untouched); return the bytes written."""
        n = 0
        for chunk in self.chunks(limit, what):
            write(chunk)
            n += len(chunk)
        return n

    def reader(self, limit: int | None, what: str) -> IO[bytes]:
        """A file-like view (``read(n)``) for code that consumes streams, bounded the same way."""
        return cast(IO[bytes], _Reader(self.chunks(limit, what)))


class Interrupted(NetError):
    """The body stopped early (connection reset, short of Content-Length): worth another try."""

    transient = True

    def __init__(self, url: str, detail: str, received: int) -> None:
        super().__init__(url, f"the transfer broke off after {received} bytes ({detail})",
                         "try again (fetch resumes where it stopped)")


class _Reader:
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._buf = chunks, b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._buf += chunk
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


class Client:
    """A requests session behind the policy, the credential rule, retries and the deadline."""

    def __init__(self, policy: Policy | None = None, *, attempts: int = 4, backoff: float = 0.5,
                 deadline: float = DEADLINE, min_rate: float = MIN_RATE, read_timeout: float = READ_TIMEOUT,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.policy = policy or Policy()
        self.attempts, self.backoff = max(1, attempts), backoff
        self.deadline, self.min_rate, self.read_timeout = deadline, min_rate, read_timeout
        self._sleep = sleep
        _load_requests()
        self.session = requests.Session()
        self.session.trust_env = True  # proxies and CA bundles from the environment, as before
        for prefix in ("http://", "https://"):
            self.session.mount(prefix, _paced_adapter()(pool_maxsize=POOL_SIZE))

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, method: str, url: str, *, headers: Mapping[str, str] | None = None, body: Body = None,
             credential: Credential | None = None, retry: bool = True, mirror: bool = True) -> Response:
        """One request, redirects followed by hand, transient failures retried.

        A URL that a configured mirror covers (``core/mirrors``) is read from
        the mirror, unless ``mirror`` is false (fetch tries mirror and upstream
        itself); the answer's ``url`` is upstream's.

        Returns the final answer whatever its status (below 500) for the caller
        to judge; raises ``URLRefused`` for a hop the policy forbids and
        ``Unreachable`` when every attempt failed. With ``retry=False`` one
        attempt is made and any answer, 5xx included, is returned: for callers
        with their own retry loop (fetch resumes between attempts).
        """
        last = ""
        attempts = self.attempts if retry else 1
        if mirror:
            url = mirrors.active().mirrored(url)
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                self._sleep(self.backoff * 2 ** (attempt - 2))
            try:
                resp = self._follow(method, url, headers or {}, body, credential)
            except requests.exceptions.SSLError as e:  # a certificate or protocol problem: no blip
                raise NetError(url, f"TLS failed: {_short(e)}",
                               "the server's certificate is not trusted here, or it does not speak HTTPS "
                               "(a registry on plain http needs --insecure)") from e
            except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
                last = _short(e)
                continue
            if retry and (resp.status_code >= 500 or resp.status_code in _RETRY_STATUS):
                last = f"HTTP {resp.status_code} from {resp.url}"
                resp.close()
                continue
            return resp
        raise Unreachable(url, last, attempts)

    def _follow(self, method: str, url: str, headers: Mapping[str, str], body: Body,
                credential: Credential | None) -> Response:
        started = time.monotonic()
        for _ in range(MAX_REDIRECTS + 1):
            self.policy.check(url, mirror=mirrors.active().is_mirror(url))
            hdrs = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
            hdrs.pop("Authorization", None)  # only the credential rule below puts one in
            if credential is not None and origin(url) == credential.origin and \
                    self.policy.carries_credentials(url):
                hdrs["Authorization"] = credential.header
            resp = self._request(method, url, hdrs, body, started)
            if resp.status_code not in _REDIRECTS or "Location" not in resp.headers:
                return Response(resp, started, self.deadline, self.min_rate)
            resp.close()
            url = urljoin(url, resp.headers["Location"])
            if resp.status_code == 303 or (resp.status_code in (301, 302) and method == "POST"):
                method, body = "GET", None
        raise NetError(url, f"more than {MAX_REDIRECTS} redirects", "the server redirects in a loop")

    def _request(self, method: str, url: str, headers: Mapping[str, str], body: Body,
                 started: float) -> requests.Response:
        """One hop, up to its status line and headers, within what is left of the deadline."""
        def expired() -> DeadlineExceeded:
            return DeadlineExceeded(url, time.monotonic() - started, 0, deadline=self.deadline,
                                    min_rate=self.min_rate, headers=True)

        remaining = self.deadline - (time.monotonic() - started)
        if remaining <= 0:
            raise expired()
        timeout = (min(CONNECT_TIMEOUT, remaining), min(self.read_timeout, remaining))
        _pace.until = started + self.deadline
        try:
            with open(body, "rb") if isinstance(body, Path) else contextlib.nullcontext(body) as data:
                return self.session.request(method, url, data=data, headers=headers, stream=True,
                                            timeout=timeout, allow_redirects=False)
        except requests.exceptions.InvalidSchema as e:
            raise URLRefused(url, f"a URL requests cannot follow ({_short(e)})") from e
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as e:
            if time.monotonic() - started >= self.deadline:
                raise expired() from e
            raise
        finally:
            _pace.until = None


# The deadline of the request this thread is sending (monotonic seconds), read by the paced
# responses below while they read a status line and headers; None outside ``Client._request``.
_pace = threading.local()
_pace.until = None


@functools.cache
def _paced_adapter() -> type[requests.adapters.HTTPAdapter]:
    """A requests adapter whose connections read status lines and headers within the request's deadline.

    urllib3 sets one timeout per read; a server that sends a byte of its headers every few
    seconds would never meet it. Here each read of a status line or header waits at most
    until the deadline in ``_pace`` (and at most the read timeout): the response's reads go
    through ``Paced``, which sets the socket's timeout before every one. Once the headers
    are in, reads go on as before (``Response.chunks`` judges the body's pace). Built on
    the first ``Client``, after requests is imported; a SOCKS proxy keeps urllib3's own
    connections (and per-read timeouts only).
    """
    import requests.adapters
    import urllib3.connection
    import urllib3.connectionpool

    paced = _paced_response()

    class HTTPConnection(urllib3.connection.HTTPConnection):
        response_class = paced

    class HTTPSConnection(urllib3.connection.HTTPSConnection):
        response_class = paced

    class HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
        ConnectionCls = HTTPConnection

    class HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
        ConnectionCls = HTTPSConnection

    pools = {"http": HTTPPool, "https": HTTPSPool}

    class Adapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **proxy_kwargs)
            if not proxy.lower().startswith("socks"):
                manager.pool_classes_by_scheme = pools
            return manager

    return Adapter


@functools.cache
def _paced_response() -> type[http.client.HTTPResponse]:
    """An ``http.client`` response whose status line and headers are read within ``_pace.until``."""
    import http.client
    import io

    class Paced(io.RawIOBase):
        def __init__(self, sock: socket.socket) -> None:
            super().__init__()
            self._sock, self._io = sock, sock.makefile("rb", buffering=0)
            self.until: float | None = None
            self.per_read: float | None = None

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int | None:
            if self.until is not None:
                left = self.until - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the request's deadline passed")
                self._sock.settimeout(left if self.per_read is None else min(self.per_read, left))
            return self._io.readinto(buffer)

        def close(self) -> None:
            self._io.close()
            super().close()

    class PacedResponse(http.client.HTTPResponse):
        def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
            super().__init__(sock, *args, **kwargs)
            self.fp.close()  # the plain one; reads go through the paced one
            self._paced = Paced(sock)
            self._paced_sock = sock
            self.fp = io.BufferedReader(self._paced)

        def begin(self) -> None:
            until = getattr(_pace, "until", None)
            if until is None:
                return super().begin()
            self._paced.until, self._paced.per_read = until, self._paced_sock.gettimeout()
            try:
                return super().begin()
            finally:
                self._paced.until = None
                with contextlib.suppress(OSError):  # closed after a failure: nothing to restore
                    self._paced_sock.settimeout(self._paced.per_read)

    return PacedResponse


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:300]
