"""The registry client's conveniences: docker credential helpers, cross-repository mounts, resumable uploads.

Against real things: Debian's docker-registry on loopback (with htpasswd auth
where a login is asked), docker-credential-pass over ``pass`` and a gpg key
made here, an HTTP proxy that cuts a chunk in the middle on its way to the
registry, and the lying registry's spec-faithful upload sessions (docker's
distribution 2.8 drops an upload whose size no longer matches the state in
its Location, so a resume from ``Range: 0-N`` is only seen against a registry
that keeps the bytes, as the spec allows).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from lyingregistry import Lies, lying_registry
from shipenv import RegistryService, docker_registry

from buildsys.core.store import Store
from buildsys.oci.image import OciLayout
from buildsys.oci.registry import (
    CredentialHelperError,
    Registry,
    RegistryAuthError,
    SourceTruncated,
    UploadInterrupted,
    docker_credentials,
)
from buildsys.ship.mount_sources import TRIED, mount_sources, record_published
from buildsys.ship.publish import push_image

USER, PASSWORD = "builder", "s3cret"
NO_KEYS = "no-keys"  # a GNUPGHOME without the key pass encrypted with


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def anon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryService]:
    with docker_registry(tmp_path_factory.mktemp("anon-registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryService]:
    with docker_registry(tmp_path_factory.mktemp("locked-registry"), USER, PASSWORD) as reg:
        yield reg


def uploads_left(reg: RegistryService, repo: str) -> list[str]:
    """The upload sessions docker-registry still holds for ``repo`` (its storage folder, read directly).

    A cancelled one loses its ``startedat`` and ``data``; distribution 2.8 writes its hash state back after
    the cancel, so the folder itself stays (and is purged with the other abandoned uploads).
    """
    folder = reg.root / "data/docker/registry/v2/repositories" / repo / "_uploads"
    return sorted(p.parent.name for p in folder.glob("*/startedat"))


# ---------------------------------------------------------------- credential helpers


@pytest.fixture
def pass_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``pass`` initialised on a fresh gpg key (no passphrase), in this test's own GNUPGHOME."""
    if shutil.which("docker-credential-pass") is None or shutil.which("pass") is None:
        pytest.fail("docker-credential-pass and pass are not installed "
                    "(apt-get install golang-docker-credential-helpers pass; scripts/install-deps.sh does it)")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("GNUPGHOME", str(home))
    monkeypatch.setenv("PASSWORD_STORE_DIR", str(tmp_path / "pass"))
    subprocess.run(["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key",
                    "buildsys credential test", "default", "default", "never"], check=True, capture_output=True)
    listing = subprocess.run(["gpg", "--batch", "--with-colons", "--list-secret-keys"], check=True,
                             capture_output=True, text=True).stdout
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    subprocess.run(["pass", "init", fingerprint], check=True, capture_output=True)
    try:
        yield tmp_path / "pass"
    finally:  # the agents gpg started: for this home, and for the empty one a test points it at
        for gnupghome in (home, tmp_path / NO_KEYS):
            if gnupghome.is_dir():
                subprocess.run(["gpgconf", "--kill", "gpg-agent"], check=False, capture_output=True,
                               env={**os.environ, "GNUPGHOME": str(gnupghome)})


def docker_login(server: str, user: str, secret: str) -> None:
    """What `docker login` does with ``credsStore: pass``: the helper's ``store``."""
    subprocess.run(["docker-credential-pass", "store"], check=True, capture_output=True,
                   input=json.dumps({"ServerURL": server, "Username": user, "Secret": secret}).encode())


def write_config(folder: Path, doc: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(doc))
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    return folder / "config.json"


def test_a_credential_helper_logs_in_and_beats_the_plain_auths(pass_store, locked, tmp_path, monkeypatch) -> None:
    docker_login(locked.host, USER, PASSWORD)
    wrong = {locked.host: {"username": USER, "password": "not-this-one"}}
    write_config(tmp_path / "store", {"credsStore": "pass", "auths": wrong}, monkeypatch)
    assert docker_credentials(locked.host) == (USER, PASSWORD)
    data = b"through the keychain\n" * 100
    reg = Registry(locked.host, backoff=0.01)
    assert reg.push_blob("team/helper", sha(data), len(data), data)
    assert reg.get_blob_bytes("team/helper", sha(data)) == data
    # A server the keychain does not know: no login (pass 0.6 answers empty fields), as docker goes on.
    assert docker_credentials("127.0.0.1:1") is None
    # Docker Hub's credentials are kept under its v1 URL, for every name of it.
    docker_login("https://index.docker.io/v1/", "hubuser", "hubtoken")
    assert docker_credentials("docker.io") == docker_credentials("registry-1.docker.io") == ("hubuser", "hubtoken")
    # credHelpers[host] beats credsStore: the absent store helper is never run for this host.
    write_config(tmp_path / "per-host", {"credsStore": "bs-absent-helper", "credHelpers": {locked.host: "pass"}},
                 monkeypatch)
    assert docker_credentials(locked.host) == (USER, PASSWORD)
    Registry(locked.host).ping()
    with pytest.raises(CredentialHelperError, match="bs-absent-helper"):
        docker_credentials("127.0.0.1:1")  # any other host gets the store


def test_a_helper_that_is_missing_or_failing_is_named(pass_store, locked, anon, tmp_path, monkeypatch) -> None:
    config = write_config(tmp_path / "absent", {"credsStore": "bs-absent-helper"}, monkeypatch)
    Registry(anon.host).ping()  # a registry that asks for no login never runs the helper
    with pytest.raises(CredentialHelperError) as exc:
        Registry(locked.host).ping()
    assert "docker-credential-bs-absent-helper" in exc.value.message and "is not on PATH" in exc.value.message
    assert str(config) in exc.value.message and "credsStore" in exc.value.message
    assert f"echo {locked.host} | docker-credential-bs-absent-helper get" in (exc.value.hint or "")

    # The real pass helper, with a keychain whose gpg key is gone: it fails, and its words are shown.
    docker_login(locked.host, USER, PASSWORD)
    write_config(tmp_path / "pass", {"credHelpers": {locked.host: "pass"}}, monkeypatch)
    empty = tmp_path / NO_KEYS
    empty.mkdir(mode=0o700)
    monkeypatch.setenv("GNUPGHOME", str(empty))
    with pytest.raises(CredentialHelperError, match=r"credHelpers\.127\.0\.0\.1:\d+\) failed \(exit \d+\)"):
        Registry(locked.host).ping()


def test_credentials_not_found_in_the_keychain_is_anonymous(locked, anon, tmp_path, monkeypatch) -> None:
    """docker-credential-helpers' own "not found" answer (exit 1): docker goes on without a login, so do we.

    pass 0.6 answers an unknown server with empty fields instead (seen in the test above); this helper
    speaks the protocol as the osxkeychain and secretservice helpers do, written here because neither
    runs on this machine (no keychain, no D-Bus session).
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-bsnotfound"
    helper.write_text("#!/bin/sh\ncat >/dev/null\necho 'credentials not found in native keychain'\nexit 1\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    write_config(tmp_path / "cfg", {"credsStore": "bsnotfound"}, monkeypatch)
    assert docker_credentials(locked.host) is None
    Registry(anon.host).ping()
    with pytest.raises(RegistryAuthError, match="has none for it"):
        Registry(locked.host).ping()
    helper.write_text("#!/bin/sh\ncat >/dev/null\necho 'this is not json'\n")
    with pytest.raises(CredentialHelperError, match="answered something other than JSON"):
        docker_credentials(locked.host)


# ---------------------------------------------------------------- cross-repository mounts


def test_a_blob_another_repository_holds_is_mounted_not_sent(anon) -> None:
    data = os.urandom(256 << 10)
    digest = sha(data)
    reg = Registry(anon.host)
    assert reg.push_blob("mount/source", digest, len(data), data)
    assert reg.mount_blob("mount/target", digest, "mount/source")
    assert reg.get_blob_bytes("mount/target", digest) == data
    # Not there: 202, an upload was opened instead, and it is cancelled (nothing left in the registry).
    assert not reg.mount_blob("mount/elsewhere", digest, "mount/nothing-here")
    assert uploads_left(anon, "mount/elsewhere") == []
    # push_blob tries each candidate, skips the ones that lack it, sends nothing.
    assert not reg.push_blob("mount/third", digest, len(data), data, mount_from=["mount/nothing-here",
                                                                                 "mount/source"])
    assert reg.has_blob("mount/third", digest) and uploads_left(anon, "mount/third") == []


def test_publish_mounts_from_the_repositories_this_store_published_to(anon, tmp_path) -> None:
    store = Store(tmp_path / "store")
    layout = OciLayout(store.oci)
    layer = os.urandom(300 << 10)
    layer_digest = layout.add_blob_bytes(layer)
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}
    image = layout.write_image(config, [(layer_digest, len(layer))])
    reg = Registry(anon.host)
    assert mount_sources(store, anon.host, "pub/first") == []
    events: list[tuple[str, str]] = []
    assert push_image(reg, "pub/first", layout, image.manifest_digest, lambda s, d: events.append((s, d))) == \
        (2, 0, len(layer) + image_size(layout, image.config_digest))
    assert any(stage == "upload" and f"of {len(layer) / 1e6:.1f} MB" in d for stage, d in events), events
    record_published(store, anon.host, "pub/first")
    sources = mount_sources(store, anon.host, "pub/second")
    assert sources == ["pub/first"]
    sent, present, nbytes = push_image(reg, "pub/second", layout, image.manifest_digest, mount_from=sources)
    assert (sent, present, nbytes) == (0, 2, 0)  # both blobs mounted, no byte sent
    assert reg.has_manifest("pub/second", image.manifest_digest)


def image_size(layout: OciLayout, digest: str) -> int:
    return layout.blob_path(digest).stat().st_size


def test_the_mount_record_keeps_the_most_recent_and_survives_damage(tmp_path) -> None:
    store = Store(tmp_path / "store")
    for repo in ("a/one", "a/two", "a/three", "a/four", "a/two"):
        record_published(store, "reg.example.org:5000", repo)
    assert mount_sources(store, "reg.example.org:5000", "a/two") == ["a/four", "a/three", "a/one"][:TRIED]
    assert mount_sources(store, "reg.example.org:5000", "x/y") == ["a/two", "a/four", "a/three"]
    assert mount_sources(store, "other.example.org", "x/y") == []  # per registry
    (record,) = (store.root / "published").iterdir()
    record.write_text("{ damaged")
    assert mount_sources(store, "reg.example.org:5000", "x/y") == []  # a hint: damage is an empty record
    record_published(store, "reg.example.org:5000", "b/new")
    assert json.loads(record.read_text()) == {"version": 1, "repositories": ["b/new"]}


# ---------------------------------------------------------------- resumable chunked uploads


class _Proxy(http.server.ThreadingHTTPServer):
    daemon_threads = True
    upstream: str
    cut: set[tuple[str, int]]  # (method, its n-th request from 1, or -1: every one) cut half-way, unanswered
    counts: dict[str, int]
    log: list[str]


class _Forward(http.server.BaseHTTPRequestHandler):
    """Forward each request to the registry (Host kept: its Locations name the proxy); cut chosen PATCHes."""

    protocol_version = "HTTP/1.1"
    server: _Proxy

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self) -> None:
        srv = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        srv.log.append(f"{self.command} {self.path.split('?')[0]}")
        srv.counts[self.command] = n = srv.counts.get(self.command, 0) + 1
        cut = (self.command, n) in srv.cut or (self.command, -1) in srv.cut
        host, port = srv.upstream.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for k, v in self.headers.items():
            if k.lower() not in ("connection", "keep-alive"):
                conn.putheader(k, v)
        conn.endheaders()
        if cut:  # half of the chunk reaches the registry, then both connections drop
            conn.send(body[:len(body) // 2])
            conn.close()
            srv.log[-1] += " (cut)"
            self.close_connection = True
            self.connection.shutdown(2)
            return
        conn.send(body)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


@contextlib.contextmanager
def cutting_proxy(upstream: str, cut: set[tuple[str, int]]) -> Iterator[_Proxy]:
    server = _Proxy(("127.0.0.1", 0), _Forward)
    server.upstream, server.cut, server.counts, server.log = upstream, cut, {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


CHUNK = 256 << 10


def test_a_chunk_cut_half_way_resumes_from_the_offset_the_registry_reports(tmp_path) -> None:
    data = os.urandom(5 * CHUNK + 1234)
    path = tmp_path / "layer"
    path.write_bytes(data)
    seen: list[int] = []
    with lying_registry(Lies(sessions=True, cut_patches={3: 100_000})) as reg:
        client = Registry(reg.host, backoff=0.01, chunk_size=CHUNK)
        assert client.push_blob("big/layer", sha(data), len(data), path, progress=lambda d, n, t: seen.append(n))
        assert reg.blobs[sha(data)] == data and reg.uploads == {}
        calls = [(r.method, r.headers.get("Content-Range")) for r in reg.received if r.method in ("PATCH", "GET")]
    resumed_at = 2 * CHUNK + 100_000
    assert calls[:5] == [("PATCH", f"0-{CHUNK - 1}"), ("PATCH", f"{CHUNK}-{2 * CHUNK - 1}"),
                         ("PATCH", f"{2 * CHUNK}-{3 * CHUNK - 1}"),  # cut after 100,000 bytes
                         ("GET", None),  # how much do you hold? Range: 0-(2 * CHUNK + 99,999)
                         ("PATCH", f"{resumed_at}-{resumed_at + CHUNK - 1}")]
    assert seen[0] == 0 and resumed_at in seen and seen[-1] == len(data)


def test_a_chunk_the_registry_holds_only_part_of_is_resumed_not_trusted(tmp_path) -> None:
    data = os.urandom(3 * CHUNK + 5)
    with lying_registry(Lies(sessions=True, short_patches={2: 1000})) as reg:
        assert Registry(reg.host, backoff=0.01, chunk_size=CHUNK).push_blob("big/short", sha(data), len(data), data)
        assert reg.blobs[sha(data)] == data
        ranges = [r.headers.get("Content-Range") for r in reg.received if r.method == "PATCH"]
    assert ranges[:3] == [f"0-{CHUNK - 1}", f"{CHUNK}-{2 * CHUNK - 1}", f"{CHUNK + 1000}-{2 * CHUNK + 999}"]


def test_a_cut_against_docker_registry_starts_a_new_upload_and_publishes_the_right_bytes(anon, tmp_path) -> None:
    data = os.urandom(4 * CHUNK + 99)
    path = tmp_path / "layer"
    path.write_bytes(data)
    with cutting_proxy(anon.host, {("PATCH", 2)}) as proxy:
        client = Registry(f"127.0.0.1:{proxy.server_address[1]}", backoff=0.01,
                          chunk_size=CHUNK)
        assert client.push_blob("cut/layer", sha(data), len(data), path)
        log = proxy.log
    # distribution drops the upload whose size no longer matches its Location's state: a new one, from 0.
    assert log.count("POST /v2/cut/layer/blobs/uploads/") == 2, log
    assert any(entry.startswith("PATCH") and entry.endswith("(cut)") for entry in log)
    assert Registry(anon.host).get_blob_bytes("cut/layer", sha(data)) == data


def test_an_upload_cut_every_time_is_a_named_error_and_leaves_nothing(anon, tmp_path) -> None:
    data = os.urandom(3 * CHUNK)
    path = tmp_path / "layer"
    path.write_bytes(data)
    with cutting_proxy(anon.host, {("PATCH", -1)}) as proxy:
        client = Registry(f"127.0.0.1:{proxy.server_address[1]}", backoff=0.01, chunk_size=CHUNK, resumes=2)
        with pytest.raises(UploadInterrupted) as exc:
            client.push_blob("cut/never", sha(data), len(data), path)
        log = proxy.log
    patches = [entry.split()[1] for entry in log if entry.startswith("PATCH")]
    assert len(patches) == 3  # the first try and 2 resumes, then no more
    assert sha(data) in exc.value.message and "byte 0 of" in exc.value.message and "3 time(s)" in exc.value.message
    assert "nothing was published" in exc.value.message
    assert not Registry(anon.host).has_blob("cut/never", sha(data))
    # Every upload it opened was cancelled. (distribution 2.8 answers a DELETE of an upload whose size no
    # longer matches its Location's state with 404, and keeps the partial data until its upload purge;
    # no client can remove it. It is no blob: nothing refers to it, nothing can pull it.)
    assert [entry.split()[1] for entry in log if entry.startswith("DELETE")] == patches


def test_a_whole_blob_cut_half_way_goes_again_in_a_new_upload(anon) -> None:
    data = os.urandom(CHUNK)
    with cutting_proxy(anon.host, {("PUT", 1)}) as proxy:
        assert Registry(f"127.0.0.1:{proxy.server_address[1]}", backoff=0.01).push_blob("cut/whole", sha(data),
                                                                                          len(data), data)
        assert [e.split()[0] for e in proxy.log] == ["HEAD", "POST", "PUT", "HEAD", "DELETE", "POST", "PUT"]
    assert Registry(anon.host).get_blob_bytes("cut/whole", sha(data)) == data
    with cutting_proxy(anon.host, {("PUT", -1)}) as proxy:
        client = Registry(f"127.0.0.1:{proxy.server_address[1]}", backoff=0.01, resumes=1)
        with pytest.raises(UploadInterrupted, match=r"broke off at byte 0 of \d+, 2 time\(s\)"):
            client.push_blob("cut/whole-never", sha(data), len(data), data)
        assert proxy.counts["PUT"] == 2 and proxy.counts["DELETE"] == 2
    assert not Registry(anon.host).has_blob("cut/whole-never", sha(data))


def test_a_source_shorter_than_its_size_is_a_named_error(tmp_path) -> None:
    data = os.urandom(3 * CHUNK)
    path = tmp_path / "layer"
    path.write_bytes(data[: 2 * CHUNK + 10])  # cut short after the digest was taken
    with lying_registry(Lies(sessions=True)) as reg:
        with pytest.raises(SourceTruncated, match=rf"{path} ends at byte {2 * CHUNK + 10}, not at its declared"):
            Registry(reg.host, backoff=0.01, chunk_size=CHUNK).push_blob("x/y", sha(data), len(data), path)
        assert reg.uploads == {} and reg.blobs == {}  # cancelled, nothing kept
