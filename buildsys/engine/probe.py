"""One question to the docker engine without the docker SDK: which image does NAME:TAG name?

A no-op ``buildsys build`` must not claim an image that the engine no longer
holds (``docker image prune -a``, ``docker rmi``) or a tag that something else
moved (``docker tag``), yet importing the SDK alone costs ~0.2 s, most of a
no-op. So the no-op asks this once per tag, over the engine's unix socket with
the standard library (a few ms; plain ``tcp://`` too), and hands over to ``engine`` (the module that
imports ``docker``) only when the answer is not the image it expects. Read
only: nothing here changes the engine.
"""

from __future__ import annotations

import json
import os
import socket
from urllib.parse import quote

DEFAULT_HOST = "unix:///var/run/docker.sock"


def tagged_image(ref: str, timeout: float = 2.0) -> str | None:
    """The image ID that ``ref`` (NAME:TAG) names in the engine at DOCKER_HOST.

    ``""`` when the engine answered that it has no such image; ``None`` when it
    cannot be asked this way (ssh://, TLS, no answer, an answer not
    understood): the caller decides what it may trust then.
    """
    host = os.environ.get("DOCKER_HOST") or DEFAULT_HOST
    request = f"GET /images/{quote(ref, safe=':')}/json HTTP/1.0\r\nHost: docker\r\n\r\n".encode()
    try:
        with _connect(host, timeout) as s:
            s.sendall(request)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
    except (OSError, _CannotAsk):
        return None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2:
        return None
    if status[1] == b"404":
        return ""
    if status[1] != b"200":
        return None
    try:
        image_id = json.loads(body).get("Id")
    except (ValueError, AttributeError):
        return None
    return image_id if isinstance(image_id, str) else None


class _CannotAsk(Exception):
    """An engine this module does not talk to (ssh://, TLS): the caller decides what to trust."""


def _connect(host: str, timeout: float) -> socket.socket:
    """A connected socket to the engine: its unix socket, or plain TCP (``tcp://HOST:PORT`` without TLS)."""
    if host.startswith("unix://"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect(host.removeprefix("unix://"))
        except OSError:
            s.close()
            raise
        return s
    if host.startswith("tcp://") and not os.environ.get("DOCKER_TLS_VERIFY") and not os.environ.get("DOCKER_CERT_PATH"):
        address, _, port = host.removeprefix("tcp://").rstrip("/").rpartition(":")
        if address and port.isdigit():
            return socket.create_connection((address.strip("[]"), int(port)), timeout=timeout)
    raise _CannotAsk(host)
