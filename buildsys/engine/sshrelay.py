"""``DOCKER_HOST=ssh://[USER@]HOST[:PORT]``: the engine of another machine through the ssh client.

The docker SDK speaks ssh:// only with paramiko installed, even when told to use
the ssh binary; the docker CLI uses the ssh client instead (the user's config,
keys, agent and known hosts). So does buildsys: a unix socket in a private
temporary folder, each connection to which is relayed through its own
``ssh [-l USER] [-p PORT] -- HOST docker system dial-stdio`` (what the docker
CLI runs); the SDK talks to that socket. Standard library only.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from urllib.parse import urlsplit

from buildsys.core.errors import EngineUnavailable


class SshRelay:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "ssh" or not parts.hostname:
            raise EngineUnavailable(f"DOCKER_HOST={url} is not ssh://[USER@]HOST[:PORT]")
        if shutil.which("ssh") is None:
            raise EngineUnavailable(f"DOCKER_HOST={url} needs the ssh client, and there is none on PATH "
                                    "(apt-get install openssh-client)")
        self.url = url
        self.argv = ["ssh", *(["-l", parts.username] if parts.username else []),
                     *(["-p", str(parts.port)] if parts.port else []), "--", parts.hostname,
                     "docker", "system", "dial-stdio"]
        self.errors: list[str] = []  # what ssh said when a connection failed
        self.folder = tempfile.mkdtemp(prefix="buildsys-ssh-")  # 0700: the socket is this user's alone
        self.path = os.path.join(self.folder, "docker.sock")
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(16)
        self._closed = False
        threading.Thread(target=self._accept, name="buildsys-ssh-relay", daemon=True).start()
        atexit.register(self.close)

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        except OSError as e:
            self.errors.append(f"{self.argv[0]}: {e}")
            conn.close()
            return
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr

        def upstream() -> None:
            with contextlib.suppress(OSError, ValueError):
                while data := conn.recv(65536):
                    stdin.write(data)
                    stdin.flush()
            with contextlib.suppress(OSError):
                stdin.close()

        said: list[bytes] = []

        def errors() -> None:  # read as it comes: a full stderr pipe would stall ssh
            with contextlib.suppress(OSError, ValueError):
                said.append(stderr.read())

        sender = threading.Thread(target=upstream, daemon=True)
        reader = threading.Thread(target=errors, daemon=True)
        sender.start()
        reader.start()
        with contextlib.suppress(OSError):
            while data := os.read(stdout.fileno(), 65536):
                conn.sendall(data)
        # What ssh said is kept before the connection closes: the client's error then finds it.
        with contextlib.suppress(subprocess.TimeoutExpired):
            if proc.wait(timeout=5) != 0:
                reader.join(timeout=5)
                if text := b"".join(said).decode(errors="replace").strip():
                    self.errors.append(text.splitlines()[-1])
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
        conn.close()
        sender.join(timeout=1)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                self._server.close()
            shutil.rmtree(self.folder, ignore_errors=True)
