"""A mirror on loopback, as a company runs one: it answers under its own prefixes from upstream.

``proxy({"/debian": "http://deb.debian.org/debian"})`` serves
``http://127.0.0.1:PORT/debian/...`` by reading the same path from upstream
(an Artifactory remote repository, apt-cacher-ng and devpi do this), and logs
every path asked. ``rewrite`` replaces upstream URLs in the bodies it relays by
its own (as PyPI mirrors do in their index pages), so that clients read the
files through it too. Range requests pass through (with upstream's
Accept-Ranges and Content-Range), and ``sent`` counts the body bytes answered
per path. ``files`` serves fixed bytes at fixed paths (a snapshot
that still has a file upstream dropped), and every other path is 404.
"""

from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Served:
    url: str  # http://127.0.0.1:PORT
    asked: list[str] = field(default_factory=list)  # every path asked, in order
    sent: dict[str, int] = field(default_factory=dict)  # body bytes answered, by path

    def saw(self, part: str) -> list[str]:
        return [p for p in self.asked if part in p]


@contextmanager
def proxy(routes: Mapping[str, str] | None = None, *, rewrite: Mapping[str, str] | None = None,
          files: Mapping[str, bytes] | None = None) -> Iterator[Served]:
    route, rewrites, fixed = dict(routes or {}), dict(rewrite or {}), dict(files or {})
    served = Served("")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, status: int, body: bytes, ctype: str = "application/octet-stream",
                    headers: Mapping[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            headers = dict(headers or {})
            self.send_header("Content-Length", headers.pop("Content-Length", str(len(body))))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
                served.sent[self.path] = served.sent.get(self.path, 0) + len(body)

        def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802
            served.asked.append(self.path)
            if self.path in fixed:
                return self._answer(200, fixed[self.path])
            prefix = max((p for p in route if self.path == p or self.path.startswith(p + "/")), key=len,
                         default=None)
            if prefix is None:
                return self._answer(404, b"not here\n", "text/plain")
            url = route[prefix] + self.path[len(prefix):]
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range", "user-agent")}
            try:
                # A HEAD goes upstream as a HEAD: files.pythonhosted.org says Accept-Ranges only there.
                ask = urllib.request.Request(url, headers=headers, method=self.command)
                with urllib.request.urlopen(ask, timeout=60) as r:
                    body, status, ctype = r.read(), r.status, r.headers.get("Content-Type", "")
                    kept = ("Accept-Ranges", "Content-Range") + (("Content-Length",) if self.command == "HEAD" else ())
                    passed = {k: r.headers[k] for k in kept if r.headers.get(k)}
            except urllib.error.HTTPError as e:
                body, status, ctype, passed = e.read(), e.code, e.headers.get("Content-Type", ""), {}
            for old, new in rewrites.items():
                body = body.replace(old.encode(), new.replace("@SELF@", served.url).encode())
            self._answer(status, body, ctype, passed)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
