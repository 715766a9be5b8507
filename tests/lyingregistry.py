"""A small threaded registry for tests that lies: about digests, sizes, realms, Locations and pace.

It speaks just enough of the distribution API (``/v2/``, manifests, blobs,
uploads) for buildsys's client, serves what a test put in ``manifests`` and
``blobs``, and records every request it received (method, path, headers) so
that a test asserts on what really went over the wire: which Authorization
header reached which server, how many attempts were made, how many bytes
were sent before the client hung up.

Its lies are switched on per test through ``Lies``: a Bearer ``realm`` (on
another server, say), a required Basic login, an upload ``Location`` on
another origin, a redirect of blob reads (to ``file:``), a drip (a byte every
``drip`` seconds) of the body or (``drip_headers``) of the status line and
headers, endless bodies, a ``Content-Length`` that says less than
is sent. Bind it to 127.0.0.2 to play "another host" next to 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
USER, PASSWORD = "robot", "s3cret"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
TOKEN = "the-token"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Lies:
    realm: str | None = None  # answer /v2/* with a Bearer challenge naming this realm
    basic: bool = False  # ask for Basic USER:PASSWORD
    token_endpoint: bool = False  # serve /token (Basic USER:PASSWORD -> TOKEN)
    location: str | None = None  # the Location of an upload session (default: our own /upload/ID)
    blob_redirect: str | None = None  # blob GETs answer 302 to this URL
    drip: float = 0.0  # seconds between two bytes of a GET body
    drip_headers: float = 0.0  # seconds between two bytes of the status line and headers (every answer)
    endless: bool = False  # GET bodies go on forever (blobs and manifests)
    short_length: bool = False  # Content-Length says 10 bytes less than the body
    status: int | None = None  # answer every request with this status (e.g. 503)
    sessions: bool = False  # keep real upload sessions (PATCH appends, GET says Range: 0-N, PUT checks the digest)
    cut_patches: dict[int, int] = field(default_factory=dict)  # PATCH number -> bytes kept before hanging up
    short_patches: dict[int, int] = field(default_factory=dict)  # PATCH number -> bytes kept, then a 202 (Range)
    refuse_media: str | None = None  # a manifest PUT naming this media type is refused (400 MANIFEST_INVALID)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body_bytes: int = 0


@dataclass
class LyingRegistry:
    host: str  # HOST:PORT
    lies: Lies
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # ref -> (bytes, media type)
    blobs: dict[str, bytes] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    sent_bytes: int = 0  # body bytes written before the client hung up (all requests)
    uploads: dict[str, bytearray] = field(default_factory=dict)  # upload id -> bytes held (with Lies.sessions)
    patches: int = 0  # PATCHes received (with Lies.sessions)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def authorizations(self) -> list[str | None]:
        return [r.headers.get("Authorization") for r in self.received]

    def put_image(self, repo: str, tag: str, config: bytes, layers: list[bytes], *,
                  manifest: dict[str, object] | None = None) -> str:
        """Store a config, its layers and a manifest (or the one given, as is) under ``tag``; its digest."""
        for blob in (config, *layers):
            self.blobs[digest(blob)] = blob
        doc = manifest or {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest(config), "size": len(config)},
            "layers": [{"mediaType": LAYER_TAR, "digest": digest(la), "size": len(la)} for la in layers],
        }
        data = json.dumps(doc).encode()
        self.manifests[tag] = self.manifests[digest(data)] = (data, OCI_MANIFEST)
        return digest(data)


def config(diff_ids: list[str], arch: str = "amd64") -> bytes:
    return json.dumps({"architecture": arch, "os": "linux", "created": "2024-05-01T12:00:00Z",
                       "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def flush_headers(self) -> None:
        drip = self.server.state.lies.drip_headers
        if not drip:
            return super().flush_headers()
        data = b"".join(getattr(self, "_headers_buffer", []))
        self._headers_buffer: list[bytes] = []
        try:
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(drip)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        return None

    def _record(self) -> Received:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.body = body
        rec = Received(self.command, self.path, dict(self.headers.items()), len(body))
        self.server.state.received.append(rec)
        return rec

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None,
              length: int | None = None) -> None:
        lies = self.server.state.lies
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        endless = lies.endless and self.command == "GET" and code == 200
        if length is None:
            length = len(body) - (10 if lies.short_length and body else 0)
        if endless:
            length = max(length, 1) * 1000
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            if lies.drip and self.command == "GET" and code == 200:
                for i in range(length):
                    self.wfile.write(body[i:i + 1] or b"x")
                    self.wfile.flush()
                    self.server.state.sent_bytes += 1
                    time.sleep(lies.drip)
            elif endless:
                chunk = (body or b"x") * max(1, (1 << 16) // max(1, len(body)))
                while True:
                    self.wfile.write(chunk)
                    self.server.state.sent_bytes += len(chunk)
            else:
                self.wfile.write(body)
                self.server.state.sent_bytes += len(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _authorized(self) -> bool:
        lies, auth = self.server.state.lies, self.headers.get("Authorization")
        if lies.realm:
            if auth == f"Bearer {TOKEN}":
                return True
            self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                       {"WWW-Authenticate": f'Bearer realm="{lies.realm}",service="lying",scope="repository:x:pull"'})
            return False
        if lies.basic:
            if auth == BASIC:
                return True
            self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": 'Basic realm="lying"'})
            return False
        return True

    def _route(self) -> None:
        state = self.server.state
        self._record()
        if state.lies.status:
            return self._send(state.lies.status, b"{}")
        path = self.path.split("?", 1)[0]
        if path.startswith("/token"):
            if self.headers.get("Authorization") != BASIC:
                return self._send(401, b"{}")
            return self._send(200, json.dumps({"token": TOKEN}).encode())
        if path.startswith("/upload/"):  # a Location target (on us, or on another origin)
            return self._send(201 if self.command == "PUT" else 202, b"",
                              {"Location": f"{state.url}{path}", "Docker-Upload-UUID": "x"})
        if not path.startswith("/v2/"):
            return self._send(404, b"{}")
        if self._authorized():  # else it has answered 401
            self._distribution(path)
        return None

    def _distribution(self, path: str) -> None:
        """The distribution API under /v2/, for a client that got past ``_authorized``."""
        if path == "/v2/":
            return self._send(200, b"{}")
        repo_kind, _, ref = path[4:].rpartition("/")
        if repo_kind.endswith("/blobs/uploads"):
            if self.server.state.lies.sessions:
                ident = str(len(self.server.state.uploads) + 1)
                self.server.state.uploads[ident] = bytearray()
                return self._send(202, b"", {"Location": f"/upload/{ident}", "Range": "0-0"})
            location = self.server.state.lies.location or f"{self.server.state.url}/upload/1"
            return self._send(202, b"", {"Location": location})
        if repo_kind.endswith("/manifests"):
            return self._manifest(ref)
        if repo_kind.endswith("/blobs"):
            return self._blob(ref)
        return self._send(404, b"{}")

    def _manifest(self, ref: str) -> None:
        """A PUT is taken (with an empty digest header); a GET or HEAD serves what the test stored."""
        state = self.server.state
        if self.command == "PUT":
            if state.lies.refuse_media and state.lies.refuse_media.encode() in self.body:
                return self._send(400, b'{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid",'
                                       b'"detail":"unsupported layer media type"}]}')
            return self._send(201, b"", {"Docker-Content-Digest": ""})
        if ref not in state.manifests:
            return self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
        data, media = state.manifests[ref]
        return self._send(200, data, {"Content-Type": media})

    def _blob(self, ref: str) -> None:
        """A stored blob, or a redirect of GETs when that lie is on."""
        state = self.server.state
        if state.lies.blob_redirect and self.command == "GET":
            return self._send(302, b"", {"Location": state.lies.blob_redirect})
        if ref not in state.blobs:
            return self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
        return self._send(200, state.blobs[ref], {"Content-Type": "application/octet-stream"})

    def _session(self, rest: str) -> None:
        """An upload session as the spec has it; a PATCH in ``cut_patches`` keeps its first bytes and hangs up."""
        state = self.server.state
        ident, _, query = rest.partition("?")
        held = state.uploads.get(ident)
        if held is None:
            return self._send(404, b'{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN"}]}')
        where = {"Location": f"/upload/{ident}", "Range": f"0-{max(len(held) - 1, 0)}"}
        length = int(self.headers.get("Content-Length") or 0)
        if self.command == "PATCH":
            state.patches += 1
            start = int((self.headers.get("Content-Range") or "0-").split("-")[0])
            if start != len(held):
                self.rfile.read(length)
                return self._send(416, b'{"errors":[{"code":"BLOB_UPLOAD_INVALID"}]}', where)
            if state.patches in state.lies.cut_patches:
                held += self.rfile.read(state.lies.cut_patches[state.patches])
                self.close_connection = True
                self.connection.shutdown(2)  # the connection is cut mid-chunk, with no answer
                return None
            body = self.rfile.read(length)
            held += body[:state.lies.short_patches.get(state.patches, length)]  # a proxy that dropped the rest
            return self._send(202, b"", {**where, "Range": f"0-{len(held) - 1}"})
        if self.command == "PUT":
            held += self.rfile.read(length)
            want = query.partition("digest=")[2]
            if digest(bytes(held)) != want:
                return self._send(400, b'{"errors":[{"code":"DIGEST_INVALID"}]}')
            state.blobs[want] = bytes(held)
            del state.uploads[ident]
            return self._send(201, b"", {"Docker-Content-Digest": want})
        if self.command == "DELETE":
            del state.uploads[ident]
            return self._send(204)
        return self._send(204, b"", where)  # GET: the upload's state

    def _route_session(self) -> None:
        """With sessions, an upload's body is the session's to read: record the request without it."""
        path = self.path.split("?", 1)[0]
        if self.server.state.lies.sessions and path.startswith("/upload/"):
            self.server.state.received.append(Received(self.command, self.path, dict(self.headers.items())))
            return self._session(self.path.removeprefix("/upload/"))
        return self._route()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _route_session


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    state: LyingRegistry

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up (buildsys closing a connection after a refusal) is no server error; anything
        else is printed as socketserver does. Printed, a reset lands in the stderr of the CLI under test."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextlib.contextmanager
def lying_registry(lies: Lies | None = None, bind: str = "127.0.0.1") -> Iterator[LyingRegistry]:
    server = _Server((bind, 0), _Handler)
    server.state = LyingRegistry(f"{bind}:{server.server_address[1]}", lies or Lies())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.state
    finally:
        server.shutdown()
        server.server_close()


def only_127_0_0_1(host: str) -> bool:
    """A loopback rule for tests: 127.0.0.1 is this machine, 127.0.0.2 plays a remote host."""
    return host.split(":")[0] in ("127.0.0.1", "localhost")
