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
``~/.docker/config.json``): the helper of ``credHelpers[SERVER]``, else of
``credsStore`` (``docker-credential-NAME get``), else ``auths.HOST.auth``
(base64 ``user:password``) or ``username``/``password``; a 401 answered with
``WWW-Authenticate: Basic`` retries with them, one with
``Bearer realm=...,service=...,scope=...`` fetches a token from the realm (with
the credentials, when there are any) and retries with it.

Large blobs go up in chunks (``Registry.chunk_size``), and a chunk that fails
resumes from the offset the registry reports (``GET`` of the upload: ``Range:
0-N``), or from a new upload when the registry has dropped the old one; a blob
another repository of the registry holds is mounted (``mount_blob``), not sent.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode, urljoin

from buildsys.core import names, net
from buildsys.core.errors import BuildsysError, UsageError
from buildsys.core.urlpolicy import local_reason
from buildsys.model.lockschema import IMAGE_LAYER

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_CHUNK = 1 << 20
CHUNK_SIZE = 64 << 20  # blobs above this go up in resumable chunks; below, one request is cheaper
RESUMES = 4  # failed chunks of one blob, each resumed, before the upload is given up
BlobProgress = Callable[[str, int, int], None]  # (digest, bytes the registry holds, size)


def _no_blob_progress(digest: str, sent: int, size: int) -> None:
    """Report nowhere: the default of ``push_blob``."""


class RegistryError(BuildsysError):
    """A registry refused, failed or could not be reached (exit 1); names the registry."""

    status: int | None = None  # the HTTP status the registry answered, when it answered one

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


class BlobSizeMismatch(RegistryError):
    def __init__(self, registry: str, digest: str, expected: int, actual: str) -> None:
        self.digest, self.expected = digest, expected
        super().__init__(registry, f"blob {digest} came back with {actual} bytes, not the {expected} its "
                         "manifest declares; it was not kept",
                         "the registry (or something between) serves damaged or hostile data; do not trust "
                         "that repository")


class UploadInterrupted(RegistryError):
    def __init__(self, registry: str, digest: str, offset: int, size: int, attempts: int, detail: str) -> None:
        self.digest, self.offset, self.size = digest, offset, size
        super().__init__(registry, f"the upload of blob {digest} broke off at byte {offset} of {size}, "
                                   f"{attempts} time(s) ({detail}); it was cancelled, nothing was published",
                         "check the network to the registry (a proxy that cuts long requests or limits their "
                         "size?), then publish again: blobs already there are not sent twice")


class SourceTruncated(RegistryError):
    def __init__(self, registry: str, digest: str, size: int, got: int, source: bytes | Path) -> None:
        self.digest = digest
        where = str(source) if isinstance(source, Path) else "the bytes given"
        super().__init__(registry, f"blob {digest}: {where} ends at byte {got}, not at its declared size {size}; "
                                   "the upload was cancelled, nothing was published",
                         "the local copy is damaged or was cut short: rebuild it, then publish again")


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


DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")
DOCKER_HUB_API = "registry-1.docker.io"
_ONE_SEGMENT = re.compile(r"^/v2/([^/]+)/((?:blobs|manifests|tags)/.*)$")


DOCKER_HUB_SERVER = "https://index.docker.io/v1/"  # the key docker uses for Docker Hub, in auths and for helpers
NOT_FOUND = "credentials not found in native keychain"  # docker-credential-helpers' own message
HELPER_TIMEOUT = 60.0  # a helper that waits longer is waiting for a person (a pinentry, a keychain dialog)


class CredentialHelperError(RegistryError):
    """A docker credential helper named in config.json is missing, failed or answered nonsense (exit 1)."""

    def __init__(self, registry: str, helper: str, key: str, config: Path, problem: str) -> None:
        self.helper, self.key = helper, key
        super().__init__(registry, f"the credential helper docker-credential-{helper} ({config}: {key}) {problem}",
                         f"check it by hand: `echo {server_key(registry)} | docker-credential-{helper} get`; "
                         f"install it or log in again (`docker login {registry}`), or remove {key} from {config}")


def server_key(host: str) -> str:
    """The server URL docker stores a registry's credentials under: the host, or Docker Hub's v1 URL."""
    return DOCKER_HUB_SERVER if host.lower() in DOCKER_HUB else host


def docker_credentials(host: str, config_dir: Path | None = None) -> tuple[str, str] | None:
    """(user, password) for ``host`` as docker finds them: ``credHelpers[server]``, else ``credsStore``, else
    ``auths`` (what ``docker login`` writes without a helper).

    A helper is run as docker runs it (``docker-credential-NAME get``, the server URL on stdin, JSON
    ``{"Username", "Secret"}`` on stdout). Its "credentials not found in native keychain", or an empty
    answer, means no login: anonymous, as docker goes on. A helper that is missing, fails or times out is
    ``CredentialHelperError`` (docker would go on anonymously and fail later on a 401 that says nothing of
    the helper).
    """
    folder = config_dir or Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise RegistryError(host, f"{path} is unreadable ({e})",
                            "fix or remove it, or log in again with `docker login`") from e
    if not isinstance(config, dict):
        raise RegistryError(host, f"{path} is not a JSON object", "fix or remove it, or log in again")
    server = server_key(host)
    helpers = config.get("credHelpers") or {}
    if isinstance(helpers, dict) and isinstance(helpers.get(server), str) and helpers[server]:
        return _helper_get(host, helpers[server], f"credHelpers.{server}", path)
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        return _helper_get(host, store, "credsStore", path)
    return _auths_entry(host, config.get("auths") or {}, path)


def _helper_get(host: str, helper: str, key: str, config: Path) -> tuple[str, str] | None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", helper):
        raise CredentialHelperError(host, helper, key, config, "is not a program name")
    program = shutil.which(f"docker-credential-{helper}")
    if program is None:
        raise CredentialHelperError(host, helper, key, config, "is not on PATH")
    try:
        done = subprocess.run([program, "get"], input=server_key(host).encode(), capture_output=True,
                              timeout=HELPER_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as e:
        raise CredentialHelperError(host, helper, key, config,
                                    f"gave no answer in {HELPER_TIMEOUT:.0f} s (is it waiting for a passphrase "
                                    "or a keychain dialog?)") from e
    except OSError as e:
        raise CredentialHelperError(host, helper, key, config, f"could not be started ({e})") from e
    out = done.stdout.decode(errors="replace").strip()
    if done.returncode != 0:
        if NOT_FOUND in out:
            return None
        said = (out or done.stderr.decode(errors="replace").strip())[:300]
        raise CredentialHelperError(host, helper, key, config, f"failed (exit {done.returncode}): {said}")
    try:
        answer = json.loads(out)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("Username", ""), str) \
            or not isinstance(answer.get("Secret", ""), str):
        raise CredentialHelperError(host, helper, key, config,
                                    "answered something other than JSON {\"Username\", \"Secret\"}")
    user, secret = answer.get("Username", ""), answer.get("Secret", "")
    if not user and not secret:  # docker-credential-pass 0.6 answers an unknown server so, with exit 0
        return None
    if user == "<token>":  # docker's marker of an identity (OAuth refresh) token
        raise CredentialHelperError(host, helper, key, config,
                                    "holds an identity token (`<token>`), which buildsys does not use")
    return user, secret


def _auths_entry(host: str, auths: Any, path: Path) -> tuple[str, str] | None:
    if not isinstance(auths, dict):
        return None
    entry = auths.get(host) or auths.get(f"https://{host}") or auths.get(f"http://{host}")
    if entry is None and host.lower() in DOCKER_HUB:  # `docker login` writes Docker Hub's under its v1 URL
        entry = auths.get(DOCKER_HUB_SERVER)
    if not isinstance(entry, dict):
        return None
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except ValueError as e:
            raise RegistryError(host, f"{path}: auths.{host}.auth is not base64 user:password",
                                f"log in again with `docker login {host}`") from e
        return user, password
    if entry.get("username"):
        return str(entry["username"]), str(entry.get("password", ""))
    return None


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, params = header.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', params))


class Registry:
    """One registry host, spoken to through ``net.Client``: every URL it follows is held to the policy.

    The docker credentials (and the token they buy) are bound to this
    registry's origin: a redirect or an upload ``Location`` on another origin
    gets no ``Authorization``; a token realm gets the Basic credentials, as the
    distribution spec's token flow requires, only over HTTPS or on loopback;
    nothing is sent in clear text to a host that is not this machine.
    ``loopback`` (what counts as this machine) is injectable for tests only.

    One client may serve several threads (``fetch`` shares one per registry
    and repository): the requests that a 401 answers at once log in once, and
    go on with the header that login gave.
    """

    def __init__(self, host: str, *, insecure: bool = False, credentials: tuple[str, str] | None = None,
                 attempts: int = 4, backoff: float = 0.5, timeout: float = net.READ_TIMEOUT,
                 deadline: float = net.DEADLINE, loopback: Callable[[str], bool] = net.is_loopback,
                 chunk_size: int = CHUNK_SIZE, resumes: int = RESUMES) -> None:
        self.host = host
        self.chunk_size, self.resumes, self.backoff = chunk_size, resumes, backoff
        # Docker Hub is named docker.io in references and answers the API at registry-1.docker.io.
        self.api_host = DOCKER_HUB_API if host.lower() in DOCKER_HUB else host
        local = loopback(host)
        self.scheme = "http" if insecure or local else "https"
        self._credentials = credentials  # docker's are looked up on the first challenge (a helper may be slow)
        self._looked_up = credentials is not None
        # A registry on this machine (by its name or address) may be read, and may lead here; a remote
        # one may not send the client to this machine (a redirect to loopback or a metadata address).
        here = local_reason(f"http://{host}/") is not None
        policy = net.Policy(https_only=True, local_ok=here, insecure=frozenset({host.lower()} if insecure else ()),
                            loopback=loopback)
        self.client = net.Client(policy, attempts=attempts, backoff=backoff, deadline=deadline,
                                 read_timeout=timeout)
        self._auth: str | None = None  # the Authorization header that worked last, for this origin only
        self._login_lock = threading.Lock()

    @property
    def credentials(self) -> tuple[str, str] | None:
        """The login for this host: given, or docker's (``docker_credentials``), looked up once, when first
        needed: a registry that never asks for one never runs a credential helper."""
        if not self._looked_up:
            self._credentials = docker_credentials(self.host)
            self._looked_up = True
        return self._credentials

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.api_host}"

    def _hub_path(self, path: str) -> str:
        """On Docker Hub an official image's repository is library/NAME (``docker.io/debian`` is
        ``library/debian``), as docker itself expands it."""
        if self.api_host == DOCKER_HUB_API and (m := _ONE_SEGMENT.match(path)):
            return f"/v2/library/{m[1]}/{m[2]}"
        return path

    # ------------------------------------------------------------ transport

    def request(self, method: str, url: str, *, body: bytes | Path | None = None,
                headers: dict[str, str] | None = None, ok: tuple[int, ...] = (200,), what: str = "",
                retry: bool = True) -> net.Response:
        """One call, with auth and retries; a ``Path`` body is streamed from the file, opened afresh per attempt.

        The caller reads the answer's body through its bounded reads and closes it.
        """
        if url.startswith("/"):
            url = self.base + self._hub_path(url)
        try:
            resp = self._send(method, url, body, headers, retry)
        except net.Unreachable as e:
            raise RegistryUnavailable(self.host, f"{e.detail} ({method} {_path(url)})", e.attempts) from e
        except net.NetError as e:
            raise RegistryError(self.host, e.message, e.hint) from e
        if resp.status_code in ok:
            return resp
        detail = _detail(resp)
        resp.close()
        if resp.status_code == 401:
            raise RegistryAuthError(self.host, f"HTTP 401 on {method} {_path(url)}" + detail)
        if resp.status_code == 403:
            raise RegistryAuthError(self.host, f"HTTP 403, not allowed to {what or method} {_path(url)}")
        if resp.status_code == 404:
            raise NotInRegistry(self.host, what or _path(url))
        error = RegistryError(self.host, f"{what or method + ' ' + _path(url)}: HTTP {resp.status_code}" + detail)
        error.status = resp.status_code
        raise error

    def _credential(self, auth: str | None) -> net.Credential | None:
        return net.Credential.for_url(self.base + "/", auth) if auth else None

    def _send(self, method: str, url: str, body: bytes | Path | None, headers: dict[str, str] | None,
              retry: bool = True) -> net.Response:
        sent = self._auth
        resp = self.client.send(method, url, headers=headers, body=body, credential=self._credential(sent),
                                retry=retry)
        if resp.status_code != 401 or "WWW-Authenticate" not in resp.headers:
            return resp
        scheme, params = _challenge(resp.headers["WWW-Authenticate"])
        resp.close()
        if net.origin(resp.url) != net.origin(self.base + "/"):
            raise RegistryAuthError(self.host, f"{resp.url}, on another origin, asks for a login; buildsys "
                                               "sends the registry's credentials only to the registry")
        if not self.client.policy.carries_credentials(self.base + "/"):
            raise RegistryAuthError(self.host, f"the registry asks for a login over plain http to {self.host}, "
                                               "which is not this machine; buildsys sends credentials only over "
                                               "HTTPS or to loopback (serve the registry over HTTPS)")
        with self._login_lock:
            if self._auth == sent:  # no other thread logged in since this request went out: log in
                self._auth = self._login(scheme, params)
            auth = self._auth
        return self.client.send(method, url, headers=headers, body=body, credential=self._credential(auth),
                                retry=retry)

    def _login(self, scheme: str, params: dict[str, str]) -> str:
        """The Authorization header that answers a challenge: Basic from the credentials, or a Bearer token."""
        if scheme == "basic":
            if not self.credentials:
                raise RegistryAuthError(self.host, "the registry asks for a login and docker's config.json "
                                                   "has none for it")
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            return f"Basic {token}"
        if scheme == "bearer":
            return f"Bearer {self._token(params)}"
        raise RegistryAuthError(self.host, f"unsupported auth scheme {scheme!r}")

    def _token(self, params: dict[str, str]) -> str:
        """A token from the challenge's realm: with Basic credentials only where they may travel."""
        realm = params.get("realm")
        if not realm:
            raise RegistryAuthError(self.host, "a Bearer challenge without a realm")
        query = urlencode({k: v for k, v in params.items() if k in ("service", "scope")})
        url = realm + (("&" if "?" in realm else "?") + query if query else "")
        credential = None
        if self.credentials and self.client.policy.carries_credentials(url):
            basic = base64.b64encode(":".join(self.credentials).encode()).decode()
            credential = net.Credential.for_url(url, f"Basic {basic}")
        try:
            with self.client.send("GET", url, credential=credential) as resp:
                if resp.status_code in (401, 403):
                    raise RegistryAuthError(self.host, f"the token service {realm} answered HTTP {resp.status_code}")
                if resp.status_code != 200:
                    raise RegistryError(self.host, f"the token service {realm} answered HTTP {resp.status_code}")
                data = _json(resp.read(net.MAX_DOCUMENT, "a token"), self.host, f"the token from {realm}")
        except net.NetError as e:
            raise RegistryAuthError(self.host, f"the token service: {e.message}") from e
        token = data.get("token") or data.get("access_token")
        if not token or not isinstance(token, str):
            raise RegistryAuthError(self.host, f"the token service {realm} gave no token")
        return token

    def ping(self) -> None:
        """``GET /v2/``: reachable, speaks the API, accepts our credentials."""
        self.request("GET", "/v2/", what="the API root /v2/").close()

    # ------------------------------------------------------------ blobs

    def has_blob(self, repo: str, digest: str) -> bool:
        try:
            self.request("HEAD", f"/v2/{repo}/blobs/{digest}", what=f"blob {digest}").close()
        except NotInRegistry:
            return False
        return True

    def push_blob(self, repo: str, digest: str, size: int, source: bytes | Path, chunk_size: int | None = None,
                  *, mount_from: Sequence[str] = (), progress: BlobProgress | None = None) -> bool:
        """Upload one blob unless the registry has it (or mounts it); return whether it was sent.

        A blob no larger than ``chunk_size`` (default ``self.chunk_size``; 0:
        never chunked) goes up monolithic: ``POST`` an upload session, then one
        ``PUT ?digest=`` with the whole body streamed from ``source`` (bytes, or
        a file). A larger one goes in ``PATCH`` chunks with ``Content-Range``,
        each to the ``Location`` the last answer gave, resumed when one fails
        (``_patch_chunks``), then ``PUT ?digest=`` with no body. Either way the
        registry checks the digest and refuses a mismatch, so a damaged or short
        upload never becomes a blob; a failed one is cancelled. Before any of
        it, each repository of ``mount_from`` is asked to lend the blob
        (``mount_blob``). ``progress`` hears (digest, bytes the registry holds,
        size) as chunks land. A ``Location`` on another origin gets the bytes
        but not the credentials.
        """
        if self.has_blob(repo, digest):
            return False
        for other in mount_from:
            # A mount is a shortcut: one refused (no read access to ``other``, no mount support) is an upload.
            with contextlib.suppress(RegistryError):
                if other != repo and self.mount_blob(repo, digest, other):
                    return False
        report = progress or _no_blob_progress
        chunk = self.chunk_size if chunk_size is None else chunk_size
        location = self._start_upload(repo)
        report(digest, 0, size)
        if chunk and size > chunk:
            location = self._patch_chunks(repo, digest, size, location, source, chunk, report)
            self._put(repo, digest, location, b"", {"Content-Length": "0"})
        else:
            self._put_whole(repo, digest, size, source, location)
        report(digest, size, size)
        return True

    def _put(self, repo: str, digest: str, location: str, body: bytes | Path, headers: dict[str, str]) -> None:
        """The ``PUT ?digest=`` that makes the upload a blob; one whose answer was lost but that took is fine."""
        sep = "&" if "?" in location else "?"
        try:
            self.request("PUT", f"{location}{sep}digest={digest}", body=body, ok=(201,), headers=headers,
                         what=f"uploading blob {digest}", retry=False).close()
        except RegistryAuthError:
            self._cancel(location)
            raise
        except RegistryError:
            with contextlib.suppress(RegistryError):
                if self.has_blob(repo, digest):
                    return
            self._cancel(location)
            raise

    def _put_whole(self, repo: str, digest: str, size: int, source: bytes | Path, location: str) -> None:
        """One ``PUT`` with the whole blob; cut or failing (5xx, upload gone), again in a new upload, bounded."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        for attempt in range(1, self.resumes + 2):
            try:
                return self._put(repo, digest, location, source, headers)
            except RegistryError as e:
                transient = isinstance(e, RegistryUnavailable | NotInRegistry) or (e.status or 0) >= 500
                if not transient:
                    raise
                if attempt > self.resumes:
                    raise UploadInterrupted(self.host, digest, 0, size, attempt, e.problem) from e
            time.sleep(self.backoff * 2 ** (attempt - 1))
            location = self._start_upload(repo)
        return None

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Ask the registry to link ``digest`` from ``from_repo`` into ``repo``: no byte is sent.

        ``201``: mounted. ``202``: not mounted (the registry lacks the blob
        there, or this login may not read ``from_repo``), and an upload session
        was opened instead; it is cancelled, and the caller uploads.
        """
        query = urlencode({"mount": digest, "from": from_repo})
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/?{query}", ok=(201, 202),
                            what=f"mounting blob {digest} from {from_repo} into {repo}")
        resp.close()
        if resp.status_code == 201:
            return True
        if resp.headers.get("Location"):
            self._cancel(self._location(resp, repo))
        return False

    def _start_upload(self, repo: str) -> str:
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/", ok=(202,), what=f"starting an upload to {repo}")
        resp.close()
        return self._location(resp, repo)

    def _cancel(self, location: str) -> None:
        """``DELETE`` an upload session, so that no half-sent blob lingers; a registry that refuses will
        expire it (distribution purges abandoned uploads), so a failure here is not the caller's error."""
        with contextlib.suppress(RegistryError):
            self.request("DELETE", location, ok=(200, 202, 204, 404), what="cancelling an upload",
                         retry=False).close()

    def _location(self, resp: net.Response, repo: str) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise RegistryError(self.host, f"an upload to {repo} answered without a Location")
        return urljoin(resp.url, location)

    def _patch_chunks(self, repo: str, digest: str, size: int, location: str, source: bytes | Path,
                      chunk_size: int, report: BlobProgress) -> str:
        """PATCH ``source`` in chunks; the Location to ``PUT`` to.

        A chunk is sent once (no blind retry: a registry may have kept part of
        it). When it fails, the registry is asked how much it holds (``GET`` of
        the upload: ``Range: 0-N``) and the upload goes on from byte N+1; a
        registry that dropped the upload (docker's distribution drops one whose
        size no longer matches the state in its Location) gets a new one, from
        byte 0. After ``self.resumes`` failures the upload is cancelled and
        ``UploadInterrupted`` names the blob and the offset.
        """
        failures, offset = 0, 0
        with (open(source, "rb") if isinstance(source, Path) else io.BytesIO(source)) as f:
            while offset < size:
                f.seek(offset)
                chunk = f.read(min(chunk_size, size - offset))
                if not chunk:
                    self._cancel(location)
                    raise SourceTruncated(self.host, digest, size, offset, source)
                try:
                    location = self._patch(repo, digest, location, offset, chunk)
                except RegistryAuthError:
                    self._cancel(location)
                    raise
                except RegistryError as e:
                    failures += 1
                    if failures > self.resumes:
                        self._cancel(location)
                        raise UploadInterrupted(self.host, digest, offset, size, failures, e.problem) from e
                    time.sleep(self.backoff * 2 ** (failures - 1))
                    location, offset = self._resume(repo, digest, size, location)
                else:
                    offset += len(chunk)
                report(digest, offset, size)
        return location

    def _patch(self, repo: str, digest: str, location: str, offset: int, chunk: bytes) -> str:
        """One chunk, sent once; the next Location. An answer whose ``Range`` says the registry holds other
        than every byte sent so far is a failure (a proxy that dropped part of the body), resumed like one."""
        end = offset + len(chunk) - 1
        what = f"uploading bytes {offset}-{end} of blob {digest}"
        with self.request("PATCH", location, body=chunk, ok=(202,), retry=False, what=what,
                          headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(chunk)),
                                   "Content-Range": f"{offset}-{end}"}) as resp:
            said = resp.headers.get("Range")
            next_location = self._location(resp, repo)
        m = re.fullmatch(r"\s*(?:bytes=)?0-(\d+)\s*", said or "")
        if said is not None and (m is None or int(m[1]) != end):
            raise RegistryError(self.host, f"{what}: the registry says it holds bytes {said.strip()[:40]}, "
                                           f"not 0-{end}")
        return next_location

    def _resume(self, repo: str, digest: str, size: int, location: str) -> tuple[str, int]:
        """(Location, offset) to go on from: what the registry says it holds of the upload, else a new one."""
        try:
            resp = self.request("GET", location, ok=(200, 204), what=f"the state of the upload of blob {digest}")
            resp.close()
        except RegistryAuthError:
            raise
        except RegistryError:  # gone (404 BLOB_UPLOAD_UNKNOWN/INVALID), or the registry cannot say
            self._cancel(location)
            return self._start_upload(repo), 0
        m = re.fullmatch(r"\s*(?:bytes=)?0-(\d+)\s*", resp.headers.get("Range") or "")
        # distribution answers "0-0" for an empty upload as for one of 1 byte; 0 is the safe reading
        held = int(m[1]) + 1 if m and int(m[1]) > 0 else 0
        if m is None or held > size:
            self._cancel(location)
            return self._start_upload(repo), 0
        return (self._location(resp, repo) if resp.headers.get("Location") else location), held

    def get_blob(self, repo: str, digest: str, dst: IO[bytes], size: int | None = None,
                 limit: int | None = None) -> int:
        """Stream a blob into ``dst``, hashing it; return its size.

        With ``size`` (the manifest's or the lock's) reading stops at one byte
        more, and a blob of another size is ``BlobSizeMismatch``; one of the
        right size with other bytes is ``BlobMismatch``. Without it, ``limit``
        (when given) is the most that is read. The caller writes
        ``dst`` under a temporary name and keeps it only when this returns.
        """
        h = hashlib.sha256()

        def write(chunk: bytes) -> None:
            h.update(chunk)
            dst.write(chunk)

        with self.request("GET", f"/v2/{repo}/blobs/{digest}", what=f"blob {digest} in {repo}") as resp:
            try:
                got = resp.stream(write, size if size is not None else limit, f"blob {digest}")
            except net.TooLarge as e:
                if size is None:
                    raise RegistryError(self.host, e.message, e.hint) from e
                raise BlobSizeMismatch(self.host, digest, size, f"more than {size}") from e
            except net.NetError as e:
                raise RegistryError(self.host, f"reading blob {digest}: {e.message}", e.hint) from e
        if size is not None and got != size:
            raise BlobSizeMismatch(self.host, digest, size, str(got))
        actual = "sha256:" + h.hexdigest()
        if actual != digest:
            raise BlobMismatch(self.host, digest, actual)
        return got

    def get_blob_bytes(self, repo: str, digest: str, size: int | None = None) -> bytes:
        """A small blob (a config) in memory: refused beyond ``net.MAX_DOCUMENT``."""
        if size is not None and size > net.MAX_DOCUMENT:
            raise RegistryError(self.host, f"blob {digest} in {repo} declares {size} bytes, more than the "
                                           f"{net.MAX_DOCUMENT} buildsys reads into memory",
                                "a config is a few KiB; the image is damaged or hostile: pick another")
        buf = io.BytesIO()
        self.get_blob(repo, digest, buf, size, limit=net.MAX_DOCUMENT)
        return buf.getvalue()

    # ------------------------------------------------------------ manifests

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        """PUT a manifest under a digest or a tag; return the digest the registry names."""
        with self.request("PUT", f"/v2/{repo}/manifests/{ref}", body=data, ok=(201,),
                          headers={"Content-Type": media_type}, what=f"putting manifest {ref} in {repo}") as resp:
            named = resp.headers.get("Docker-Content-Digest")
        return named or "sha256:" + hashlib.sha256(data).hexdigest()

    def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest or index, by tag or digest; at most ``net.MAX_DOCUMENT``.

        By digest, the bytes are checked against it; by tag, the digest is
        computed from the bytes (what a user should pin), never taken on trust.
        The bytes are JSON objects here; their fields are checked by ``parse_*``.
        """
        with self.request("GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": ", ".join(MANIFEST_TYPES)},
                          what=f"manifest {ref} in {repo}") as resp:
            try:
                data = resp.read(net.MAX_DOCUMENT, f"manifest {ref} in {repo}")
            except net.NetError as e:
                raise RegistryError(self.host, e.message, e.hint) from e
            content_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if ref.startswith("sha256:") and digest != ref:
            raise BlobMismatch(self.host, ref, digest)
        doc = _json(data, self.host, f"manifest {ref} in {repo}")
        media = content_type if content_type in MANIFEST_TYPES else str(doc.get("mediaType") or content_type)
        return data, media, digest

    def has_manifest(self, repo: str, ref: str) -> bool:
        try:
            self.request("HEAD", f"/v2/{repo}/manifests/{ref}", headers={"Accept": ", ".join(MANIFEST_TYPES)},
                         what=f"manifest {ref}").close()
        except NotInRegistry:
            return False
        return True


# ---------------------------------------------------------------- what a registry sends, checked


class RegistryDataError(RegistryError):
    """A manifest, index or config that is not what the API promises: named by document and field."""

    def __init__(self, registry: str, document: str, field: str, problem: str) -> None:
        self.document, self.field = document, field
        super().__init__(registry, f"{document}: {field}: {problem}",
                         "the registry serves a damaged or hostile document; nothing was written. Pick another "
                         "image (or digest), or tell the registry's owner")


def _json(data: bytes, host: str, document: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise RegistryDataError(host, document, "(the whole document)", f"not JSON ({_short(e)})") from e
    if not isinstance(doc, dict):
        raise RegistryDataError(host, document, "(the whole document)",
                                f"a JSON {type(doc).__name__}, not an object")
    return doc


def _check(host: str, document: str, field: str, check: Callable[[Any], str | None], value: Any) -> None:
    if problem := check(value):
        raise RegistryDataError(host, document, field, problem)


def _digest_check(v: Any) -> str | None:
    return IMAGE_LAYER["digest"][0](v)  # the lock's own check


def _size_check(v: Any) -> str | None:
    return IMAGE_LAYER["size"][0](v)


def parse_descriptor(host: str, document: str, field: str, desc: Any) -> dict[str, Any]:
    """A content descriptor: an object with a sha256 ``digest`` and a whole ``size`` of 0 or more."""
    if not isinstance(desc, dict):
        raise RegistryDataError(host, document, field, f"a {type(desc).__name__}, not a descriptor object")
    _check(host, document, f"{field}.digest", _digest_check, desc.get("digest"))
    _check(host, document, f"{field}.size", _size_check, desc.get("size"))
    media = desc.get("mediaType")
    if media is not None and not isinstance(media, str):
        raise RegistryDataError(host, document, f"{field}.mediaType", f"{media!r} is not a string")
    return desc


def parse_manifest(host: str, document: str, data: bytes) -> dict[str, Any]:
    """An image manifest whose config and every layer are valid descriptors."""
    doc = _json(data, host, document)
    parse_descriptor(host, document, "config", doc.get("config"))
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise RegistryDataError(host, document, "layers", "missing or not a list")
    for i, layer in enumerate(layers):
        parse_descriptor(host, document, f"layers[{i}]", layer)
    return doc


def parse_index(host: str, document: str, data: bytes) -> dict[str, Any]:
    """An index whose entries are valid descriptors with an optional platform object."""
    doc = _json(data, host, document)
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise RegistryDataError(host, document, "manifests", "missing or not a list")
    for i, entry in enumerate(entries):
        parse_descriptor(host, document, f"manifests[{i}]", entry)
        platform = entry.get("platform")
        if platform is not None and not (isinstance(platform, dict)
                                         and all(isinstance(v, str | list) for v in platform.values())):
            raise RegistryDataError(host, document, f"manifests[{i}].platform", "not an object of strings")
    return doc


def parse_config(host: str, document: str, data: bytes) -> dict[str, Any]:
    """An image config: an object with string os/architecture and a list of sha256 ``rootfs.diff_ids``."""
    doc = _json(data, host, document)
    for key in ("os", "architecture", "variant", "created"):
        if key in doc and not isinstance(doc[key], str):
            raise RegistryDataError(host, document, key, f"{doc[key]!r} is not a string")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise RegistryDataError(host, document, "rootfs.diff_ids", "missing or not a list")
    for i, d in enumerate(rootfs["diff_ids"]):
        _check(host, document, f"rootfs.diff_ids[{i}]", _digest_check, d)
    if "config" in doc and doc["config"] is not None and not isinstance(doc["config"], dict):
        raise RegistryDataError(host, document, "config", "not an object")
    return doc


def _path(url: str) -> str:
    return "/" + url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]


def _detail(resp: net.Response) -> str:
    try:
        body = resp.read(64 << 10, "an error answer")
    except net.NetError:
        return ""
    try:
        errors = json.loads(body).get("errors") or []
        text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict))
    except (ValueError, AttributeError):
        text = body.decode(errors="replace").strip()[:200]
    return f" ({text[:300]})" if text else ""


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:300]
