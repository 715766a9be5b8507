"""Real services for the shipping tests: Debian's docker-registry on loopback, a registry that
fails, and a second dockerd that never saw our images. Each is started and stopped by its owner
(a fixture) and touches nothing it did not create.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RegistryService:
    host: str  # 127.0.0.1:PORT
    root: Path
    user: str | None = None
    password: str | None = None


@contextlib.contextmanager
def docker_registry(root: Path, user: str | None = None, password: str | None = None) -> Iterator[RegistryService]:
    """``docker-registry serve`` with its own config, storage folder and port; htpasswd auth with a user."""
    if shutil.which("docker-registry") is None:
        raise RuntimeError("docker-registry is not installed (apt-get install docker-registry; "
                           "scripts/install-deps.sh does it)")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    auth = ""
    if user:
        out = subprocess.run(["htpasswd", "-Bbn", user, password or ""], check=True, capture_output=True, text=True)
        (root / "htpasswd").write_text(out.stdout)
        auth = f"auth:\n  htpasswd:\n    realm: buildsys-test\n    path: {root / 'htpasswd'}\n"
    (root / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}")
    log = open(root / "registry.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code in (200, 401):
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start: {(root / 'registry.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield RegistryService(f"127.0.0.1:{port}", root, user, password)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class _CountingServer(http.server.ThreadingHTTPServer):
    hits = 0


class _Failing(http.server.BaseHTTPRequestHandler):
    def _fail(self) -> None:
        assert isinstance(self.server, _CountingServer)
        self.server.hits += 1
        body = b'{"errors":[{"code":"UNKNOWN","message":"storage on fire"}]}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _fail

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def failing_registry() -> Iterator[tuple[str, _CountingServer]]:
    """A loopback server that answers 500 to everything: the registry that fails."""
    server = _CountingServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class SecondEngine:
    host: str  # unix:///.../docker.sock, for DOCKER_HOST
    root: Path
    tcp: str | None = None  # tcp://127.0.0.1:PORT when asked for: the same engine, as a remote one is reached

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", "-H", self.host, *args], check=check, capture_output=True, text=True)


BRIDGE = "bsexp0"


@contextlib.contextmanager
def second_dockerd(root: Path, *, tcp: bool = False, bridge: str = BRIDGE,
                   subnet: str = "10.213.77.1/24") -> Iterator[SecondEngine]:
    """A dockerd with its own data root, exec root, pidfile, socket and bridge.

    Never ``--bridge=none``: that removes the first engine's docker0. Its own bridge,
    and no iptables rules, leave the first engine as it was. ``tcp``: it listens on a
    loopback TCP port too (plain HTTP, as ``DOCKER_HOST=tcp://`` reaches a remote engine).
    ``bridge``/``subnet``: another pair lets two test sessions each run their own.
    """
    root.mkdir(parents=True, exist_ok=True)
    short = Path(tempfile.mkdtemp(prefix="bsexp-", dir="/tmp"))  # socket paths must stay short
    sock = short / "docker.sock"
    made_bridge = subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0
    if made_bridge:
        subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", subnet, "dev", bridge], check=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
    tcp_host = f"tcp://127.0.0.1:{free_port()}" if tcp else None
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(short / "exec"),
         "--pidfile", str(short / "docker.pid"), "-H", f"unix://{sock}", *(["-H", tcp_host] if tcp_host else []),
         "-b", bridge, "--iptables=false", "--ip-masq=false"], stdout=log, stderr=log)
    engine = SecondEngine(f"unix://{sock}", root, tcp_host)
    try:
        deadline = time.monotonic() + 60
        while engine.docker("version", check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the second dockerd did not start: {(root / 'dockerd.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield engine
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if made_bridge:
            subprocess.run(["ip", "link", "delete", bridge], check=False)
        shutil.rmtree(short, ignore_errors=True)
        # Its images are ours to remove, once nothing of it is mounted any more.
        data = str(root / "data")
        if not any(line.split()[1].startswith(data) for line in Path("/proc/mounts").read_text().splitlines()):
            shutil.rmtree(data, ignore_errors=True)


class _TokenServer(http.server.ThreadingHTTPServer):
    token_requests: list[str]


class _TokenRegistry(http.server.BaseHTTPRequestHandler):
    """/v2/ behind the Bearer flow: 401 with a realm; the realm hands out a token for basic user:pass."""

    def do_GET(self) -> None:
        srv = self.server
        assert isinstance(srv, _TokenServer)
        if self.path.startswith("/token"):
            expected = "Basic " + base64.b64encode(b"robot:tok3n-pass").decode()
            srv.token_requests.append(self.path)
            if self.headers.get("Authorization") != expected:
                return self._send(401, b'{"details":"bad credentials"}')
            return self._send(200, b'{"token":"the-token"}')
        if self.headers.get("Authorization") == "Bearer the-token":
            return self._send(200, b"{}")
        realm = f"http://127.0.0.1:{srv.server_port}/token"
        return self._send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                          {"WWW-Authenticate": f'Bearer realm="{realm}",service="test-registry",'
                                               f'scope="repository:team/app:pull,push"'})

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def token_registry() -> Iterator[tuple[str, _TokenServer]]:
    """A loopback server speaking the distribution API's Bearer token flow on /v2/ (only that)."""
    server = _TokenServer(("127.0.0.1", 0), _TokenRegistry)
    server.token_requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()
