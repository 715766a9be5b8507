"""A small client of the OCI distribution API: push by digest, pull with digest checks.

Why not a library: the candidates (oras-py, the docker SDK's push) either
re-compress and re-serialize (docker push: the registry then serves a digest
that is not ours) or pull in a CLI's worth of dependencies for four HTTP
calls. What buildsys needs is exact bytes in, exact bytes out, and errors that
name the registry; ``requests`` (already here through the docker SDK) does it.

Push order is what makes a failed push harmless: every blob first, then the
manifest by its digest, the tag last. A registry never holds a tag that points
at an incomplete image, and a retried push uploads only what is missing.

Auth follows docker: credentials from ``$DOCKER_CONFIG/config.json`` (or
``~/.docker/config.json``), ``auths.HOST.auth`` (base64 ``user:password``) or
``username``/``password``; a 401 answered with ``WWW-Authenticate: Basic``
retries with them, one with ``Bearer realm=...,service=...,scope=...`` fetches
a token from the realm (with the credentials, when there are any) and retries
with it. Credential helpers (``credsStore``/``credHelpers``) are not run.
"""

from __future__ import annotations

import base64
import hashlib
import io
import ipaddress
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import requests

from buildsys.core import names
from buildsys.core.errors import BuildsysError, UsageError

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_CHUNK = 1 << 20


class RegistryError(BuildsysError):
    """A registry refused, failed or could not be reached (exit 1); names the registry."""

    def __init__(self, registry: str, problem: str, hint: str | None = None) -> None:
        self.registry, self.problem = registry, problem
        super().__init__(f"registry {registry}: {problem}", hint)


class RegistryUnavailable(RegistryError):
    def __init__(self, registry: str, detail: str, attempts: int) -> None:
        super().__init__(registry, f"unreachable or failing after {attempts} attempt(s): {detail}",
                         "check that the registry runs and answers (curl http://HOST/v2/), then publish again: "
                         "what was uploaded already is not sent twice, and no tag was moved")


class RegistryAuthError(RegistryError):
    def __init__(self, registry: str, detail: str) -> None:
        super().__init__(registry, f"credentials refused ({detail})",
                         f"log in with `docker login {registry}` (buildsys reads docker's config.json)")


class BlobMismatch(RegistryError):
    def __init__(self, registry: str, digest: str, actual: str) -> None:
        self.digest, self.actual = digest, actual
        super().__init__(registry, f"blob {digest} came back with other content ({actual}); it was not kept",
                         "the registry (or something between) serves damaged data; do not trust that repository")


class NotInRegistry(RegistryError):
    def __init__(self, registry: str, what: str) -> None:
        super().__init__(registry, f"{what} is not there", None)


@dataclass(frozen=True)
class Reference:
    """``HOST[:PORT]/REPO[:TAG][@DIGEST]``; the host is required (no implicit Docker Hub)."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        rest, _, digest_part = text.partition("@")
        digest = digest_part or None
        host, _, path = rest.partition("/")
        if not path or not ("." in host or ":" in host or host == "localhost"):
            raise UsageError(f"'{text}' does not name a registry",
                             "write HOST[:PORT]/REPO[:TAG], e.g. 127.0.0.1:5000/team/jupyter:2025-06")
        tag = None
        last = path.rsplit("/", 1)[-1]
        if ":" in last:
            path, tag = path.rsplit(":", 1)
            if not names.IMAGE_TAG.fullmatch(tag):
                raise UsageError(f"'{text}': '{tag}' is not a valid tag", "tags are [A-Za-z0-9_][A-Za-z0-9_.-]*")
        if not names.IMAGE_REPOSITORY.fullmatch(path):
            raise UsageError(f"'{text}': '{path}' is not a valid repository name",
                             "lowercase letters, digits and . _ - separators, parts joined by /")
        if digest is not None and not names.DIGEST.fullmatch(digest):
            raise UsageError(f"'{text}': '{digest}' is not a sha256 digest")
        return cls(host, path, tag, digest)

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}" + (f":{self.tag}" if self.tag else "") + \
            (f"@{self.digest}" if self.digest else "")

    def with_digest(self, digest: str) -> str:
        return f"{self.host}/{self.repository}@{digest}"


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def docker_credentials(host: str, config_dir: Path | None = None) -> tuple[str, str] | None:
    """(user, password) for ``host`` from docker's config.json, as ``docker login`` writes it."""
    folder = config_dir or Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise RegistryError(host, f"{folder / 'config.json'} is unreadable ({e})",
                            "fix or remove it, or log in again with `docker login`") from e
    auths = config.get("auths") or {}
    entry = auths.get(host) or auths.get(f"https://{host}") or auths.get(f"http://{host}")
    if not isinstance(entry, dict):
        return None
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except ValueError as e:
            raise RegistryError(host, f"{folder / 'config.json'}: auths.{host}.auth is not base64 user:password",
                                f"log in again with `docker login {host}`") from e
        return user, password
    if entry.get("username"):
        return str(entry["username"]), str(entry.get("password", ""))
    return None


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, params = header.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', params))


class Registry:
    """One registry host. Every request is retried on a transport error or a 5xx, with backoff."""

    def __init__(self, host: str, *, insecure: bool = False, credentials: tuple[str, str] | None = None,
                 attempts: int = 4, backoff: float = 0.5, timeout: float = 60) -> None:
        self.host = host
        self.scheme = "http" if insecure or is_loopback(host) else "https"
        self.credentials = credentials if credentials is not None else docker_credentials(host)
        self.attempts, self.backoff, self.timeout = attempts, backoff, timeout
        self.session = requests.Session()
        self._auth: str | None = None  # the Authorization header that worked last

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}"

    # ------------------------------------------------------------ transport

    def request(self, method: str, url: str, *, body: bytes | Path | None = None,
                headers: dict[str, str] | None = None, ok: tuple[int, ...] = (200,), stream: bool = False,
                what: str = "") -> requests.Response:
        """One call, with auth and retries; a ``Path`` body is streamed from the file, opened afresh per attempt."""
        if url.startswith("/"):
            url = self.base + url
        last = ""
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                time.sleep(self.backoff * 2 ** (attempt - 2))
            try:
                resp = self._send(method, url, body, headers, stream)
            except requests.RequestException as e:
                last = _short(e)
                continue
            if resp.status_code >= 500:
                last = f"HTTP {resp.status_code} on {method} {_path(url)}" + _detail(resp)
                resp.close()
                continue
            if resp.status_code in ok:
                return resp
            if resp.status_code == 401:
                raise RegistryAuthError(self.host, f"HTTP 401 on {method} {_path(url)}" + _detail(resp))
            if resp.status_code == 403:
                raise RegistryAuthError(self.host, f"HTTP 403, not allowed to {what or method} {_path(url)}")
            if resp.status_code == 404:
                raise NotInRegistry(self.host, what or _path(url))
            raise RegistryError(self.host, f"{what or method + ' ' + _path(url)}: HTTP {resp.status_code}"
                                + _detail(resp))
        raise RegistryUnavailable(self.host, last, self.attempts)

    def _once(self, method: str, url: str, body: bytes | Path | None, headers: dict[str, str],
              stream: bool) -> requests.Response:
        if isinstance(body, Path):
            with open(body, "rb") as f:
                return self.session.request(method, url, data=f, headers=headers, stream=stream,
                                            timeout=self.timeout, allow_redirects=True)
        return self.session.request(method, url, data=body, headers=headers, stream=stream, timeout=self.timeout,
                                    allow_redirects=True)

    def _send(self, method: str, url: str, body: bytes | Path | None, headers: dict[str, str] | None,
              stream: bool) -> requests.Response:
        hdrs = dict(headers or {})
        if self._auth:
            hdrs["Authorization"] = self._auth
        resp = self._once(method, url, body, hdrs, stream)
        if resp.status_code != 401 or "WWW-Authenticate" not in resp.headers:
            return resp
        scheme, params = _challenge(resp.headers["WWW-Authenticate"])
        resp.close()
        if scheme == "basic":
            if not self.credentials:
                raise RegistryAuthError(self.host, "the registry asks for a login and docker's config.json "
                                                   "has none for it")
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            self._auth = f"Basic {token}"
        elif scheme == "bearer":
            self._auth = f"Bearer {self._token(params)}"
        else:
            raise RegistryAuthError(self.host, f"unsupported auth scheme {scheme!r}")
        hdrs["Authorization"] = self._auth
        return self._once(method, url, body, hdrs, stream)

    def _token(self, params: dict[str, str]) -> str:
        realm = params.get("realm")
        if not realm:
            raise RegistryAuthError(self.host, "a Bearer challenge without a realm")
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        auth = self.credentials if self.credentials else None
        resp = self.session.get(realm, params=query, auth=auth, timeout=self.timeout)
        if resp.status_code in (401, 403):
            raise RegistryAuthError(self.host, f"the token service {realm} answered HTTP {resp.status_code}")
        if resp.status_code != 200:
            raise RegistryError(self.host, f"the token service {realm} answered HTTP {resp.status_code}")
        data = resp.json()
        token = data.get("token") or data.get("access_token")
        if not token:
            raise RegistryAuthError(self.host, f"the token service {realm} gave no token")
        return str(token)

    def ping(self) -> None:
        """``GET /v2/``: reachable, speaks the API, accepts our credentials."""
        self.request("GET", "/v2/", what="the API root /v2/")

    # ------------------------------------------------------------ blobs

    def has_blob(self, repo: str, digest: str) -> bool:
        try:
            self.request("HEAD", f"/v2/{repo}/blobs/{digest}", what=f"blob {digest}")
        except NotInRegistry:
            return False
        return True

    def push_blob(self, repo: str, digest: str, size: int, source: bytes | Path, chunk_size: int | None = None,
                  ) -> bool:
        """Upload one blob unless the registry has it; return whether it was sent.

        Monolithic by default: ``POST`` an upload session, then one ``PUT ?digest=``
        with the whole body streamed from ``source`` (bytes, or a file). With
        ``chunk_size`` and a larger blob: ``PATCH`` chunks with ``Content-Range``,
        each to the ``Location`` the last answer gave, then ``PUT ?digest=`` with
        no body. Either way the registry checks the digest and refuses a mismatch.
        """
        if self.has_blob(repo, digest):
            return False
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/", ok=(202,), what=f"starting an upload to {repo}")
        location = self._location(resp, repo)
        if chunk_size and size > chunk_size:
            location = self._patch_chunks(repo, digest, location, source, chunk_size)
            source = b""
            headers = {"Content-Length": "0"}
        else:
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        sep = "&" if "?" in location else "?"
        self.request("PUT", f"{location}{sep}digest={digest}", body=source, ok=(201,), headers=headers,
                     what=f"uploading blob {digest}")
        return True

    def _location(self, resp: requests.Response, repo: str) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise RegistryError(self.host, f"an upload to {repo} answered without a Location")
        return self.base + location if location.startswith("/") else location

    def _patch_chunks(self, repo: str, digest: str, location: str, source: bytes | Path, chunk_size: int) -> str:
        with (open(source, "rb") if isinstance(source, Path) else io.BytesIO(source)) as f:
            offset = 0
            while chunk := f.read(chunk_size):
                end = offset + len(chunk) - 1
                resp = self.request("PATCH", location, body=chunk, ok=(202,),
                                    headers={"Content-Type": "application/octet-stream",
                                             "Content-Length": str(len(chunk)),
                                             "Content-Range": f"{offset}-{end}"},
                                    what=f"uploading bytes {offset}-{end} of blob {digest}")
                location = self._location(resp, repo)
                offset = end + 1
        return location

    def get_blob(self, repo: str, digest: str, dst: IO[bytes]) -> int:
        """Stream a blob into ``dst``, hashing it; raise ``BlobMismatch`` when it is not ``digest``.

        The caller writes ``dst`` under a temporary name and keeps it only when this returns.
        """
        resp = self.request("GET", f"/v2/{repo}/blobs/{digest}", stream=True, what=f"blob {digest} in {repo}")
        h, size = hashlib.sha256(), 0
        try:
            for chunk in resp.iter_content(_CHUNK):
                h.update(chunk)
                size += len(chunk)
                dst.write(chunk)
        except requests.RequestException as e:
            raise RegistryUnavailable(self.host, f"reading blob {digest}: {_short(e)}", 1) from e
        finally:
            resp.close()
        actual = "sha256:" + h.hexdigest()
        if actual != digest:
            raise BlobMismatch(self.host, digest, actual)
        return size

    def get_blob_bytes(self, repo: str, digest: str) -> bytes:
        buf = io.BytesIO()
        self.get_blob(repo, digest, buf)
        return buf.getvalue()

    # ------------------------------------------------------------ manifests

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        """PUT a manifest under a digest or a tag; return the digest the registry names."""
        resp = self.request("PUT", f"/v2/{repo}/manifests/{ref}", body=data, ok=(201,),
                            headers={"Content-Type": media_type}, what=f"putting manifest {ref} in {repo}")
        return resp.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(data).hexdigest()

    def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest or index, by tag or digest.

        By digest, the bytes are checked against it; by tag, the digest is
        computed from the bytes (what a user should pin), never taken on trust.
        """
        resp = self.request("GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": ", ".join(MANIFEST_TYPES)},
                            what=f"manifest {ref} in {repo}")
        data = resp.content
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if ref.startswith("sha256:") and digest != ref:
            raise BlobMismatch(self.host, ref, digest)
        media = resp.headers.get("Content-Type", "").split(";")[0] or json.loads(data).get("mediaType", "")
        return data, media, digest

    def has_manifest(self, repo: str, ref: str) -> bool:
        try:
            self.request("HEAD", f"/v2/{repo}/manifests/{ref}", headers={"Accept": ", ".join(MANIFEST_TYPES)},
                         what=f"manifest {ref}")
        except NotInRegistry:
            return False
        return True


def _path(url: str) -> str:
    return "/" + url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]


def _detail(resp: requests.Response) -> str:
    try:
        errors = resp.json().get("errors") or []
        text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except ValueError:
        text = resp.text.strip()[:200]
    return f" ({text})" if text else ""


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:300]
