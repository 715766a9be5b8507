"""The vendor store fetcher against a real HTTP server on loopback."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from buildsys.core.errors import FetchError, HashMismatch
from buildsys.core.store import Artifact, Store
from buildsys.fetch.vendor import DownloadFailed, FetchFailures, fetch, verify_store


@dataclass
class ServerState:
    root: Path
    base: str = ""
    log: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    hits: dict[str, int] = field(default_factory=dict)
    active: int = 0
    max_active: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Handler(http.server.BaseHTTPRequestHandler):
    """Routes by the first path segment:

    /files/NAME        serves NAME, honours Range
    /norange/NAME      serves NAME, ignores Range (always 200, whole file)
    /flaky/N/NAME      503 for the first N requests of that path, then like /files
    /wrong/NAME        200 with other bytes of the same length
    /drop/NAME         first request: announces the whole length, sends half, hangs up;
                       then like /files
    /slow/NAME         like /files after a short pause (to see downloads overlap)
    /redirect/URL...   302 to the rest of the path, read as a URL (http:/... -> http://...)
    anything else      404
    """

    protocol_version = "HTTP/1.1"
    state: ServerState

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        st = self.state
        with st.lock:
            st.log.append((self.path, self.headers.get("Range")))
            st.hits[self.path] = st.hits.get(self.path, 0) + 1
            hits = st.hits[self.path]
            st.active += 1
            st.max_active = max(st.max_active, st.active)
        try:
            self._route(hits)
        finally:
            with st.lock:
                st.active -= 1

    def _route(self, hits: int) -> None:
        parts = self.path.strip("/").split("/")
        kind, rest = parts[0], parts[1:]
        if kind == "redirect":
            self.send_response(302)
            self.send_header("Location", "/".join(rest).replace(":/", "://", 1))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if kind == "flaky":
            failures, rest = int(rest[0]), rest[1:]
            if hits <= failures:
                return self._error(503)
        path = self.state.root / "/".join(rest) if rest else None
        if path is None or not path.is_file():
            return self._error(404)
        data = path.read_bytes()
        if kind == "slow":
            time.sleep(0.3)
        if kind == "wrong":
            return self._send(200, bytes(b ^ 0xFF for b in data))
        if kind == "norange":
            return self._send(200, data)
        if kind in ("files", "flaky", "slow", "drop"):
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[len("bytes=") : -1])
                if start >= len(data):
                    return self._error(416)
            body = data[start:]
            headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if start else {}
            if kind == "drop" and hits == 1:
                return self._send(206 if start else 200, body, headers, cut=len(body) // 2 or None)
            return self._send(206 if start else 200, body, headers)
        return self._error(404)

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None, cut: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _error(self, code: int) -> None:
        body = f"error {code}\n".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerState]:
    root = tmp_path / "served"
    root.mkdir()
    state = ServerState(root=root)
    handler = type("BoundHandler", (Handler,), {"state": state})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def serve(state: ServerState, name: str, size: int = 300_000, seed: int = 0) -> tuple[bytes, str]:
    data = hashlib.sha256(f"{name}:{seed}".encode()).digest() * (size // 32 + 1)
    data = data[:size]
    (state.root / name).write_bytes(data)
    return data, hashlib.sha256(data).hexdigest()


def artifact(name: str, data: bytes, *urls: str) -> Artifact:
    return Artifact(
        kind="file",
        name=name,
        version="1",
        filename=name,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        urls=tuple(urls),
        local=True,  # the test's server is on loopback: as a [[files]] entry with local = true
    )


def leftovers(store: Store) -> list[str]:
    return sorted(p.name for p in store.vendor.iterdir() if not p.name.isalnum() or len(p.name) != 64)


def test_download_verifies_and_places_atomically(server: ServerState, store: Store) -> None:
    data, digest = serve(server, "a.bin")
    report = fetch(store, [artifact("a.bin", data, f"{server.base}/files/a.bin")], progress=False)
    assert (report.downloaded, report.skipped, report.bytes) == (1, 0, len(data))
    assert store.vendor_path(digest).read_bytes() == data
    assert leftovers(store) == []


def test_present_artifact_is_skipped_without_a_request(server: ServerState, store: Store) -> None:
    data, _ = serve(server, "a.bin")
    art = artifact("a.bin", data, f"{server.base}/files/a.bin")
    fetch(store, [art], progress=False)
    before = len(server.log)
    report = fetch(store, [art, art], progress=False)
    assert (report.downloaded, report.skipped, report.bytes) == (0, 1, 0)
    assert len(server.log) == before


def test_hash_mismatch_keeps_nothing(server: ServerState, store: Store) -> None:
    data, digest = serve(server, "a.bin")
    art = artifact("a.bin", data, f"{server.base}/wrong/a.bin")
    with pytest.raises(HashMismatch) as exc:
        fetch(store, [art], progress=False)
    assert exc.value.expected == digest and exc.value.actual != digest
    assert exc.value.url.endswith("/wrong/a.bin")
    assert "a.bin 1" in str(exc.value)
    assert not store.vendor_path(digest).exists()
    assert leftovers(store) == []  # no .partial either: nothing of it can be resumed later
    # A later fetch from a good URL starts from nothing and succeeds.
    report = fetch(store, [artifact("a.bin", data, f"{server.base}/files/a.bin")], progress=False)
    assert report.bytes == len(data)
    assert server.log[-1][1] is None


def test_size_mismatch_is_a_hash_mismatch_named_as_a_size(server: ServerState, store: Store) -> None:
    data, _ = serve(server, "a.bin")
    art = Artifact(
        "file", "a.bin", "1", "a.bin", hashlib.sha256(data).hexdigest(), len(data) - 10,
        (f"{server.base}/files/a.bin",), local=True,
    )
    with pytest.raises(HashMismatch) as exc:
        fetch(store, [art], progress=False)
    assert "wrong size" in exc.value.message and "sha256 mismatch" not in exc.value.message
    assert f"stopped reading at {len(data) - 9}" in exc.value.message
    assert not store.vendor.exists() or leftovers(store) == []


def test_404_then_second_url(server: ServerState, store: Store) -> None:
    data, digest = serve(server, "a.bin")
    art = artifact("a.bin", data, f"{server.base}/nowhere/a.bin", f"{server.base}/files/a.bin")
    assert fetch(store, [art], progress=False).downloaded == 1
    assert [p for p, _ in server.log] == ["/nowhere/a.bin", "/files/a.bin"]
    assert store.vendor_path(digest).read_bytes() == data


def test_every_url_failing_names_them_all(server: ServerState, store: Store) -> None:
    data, _ = serve(server, "a.bin")
    art = artifact("a.bin", data, f"{server.base}/nowhere/a.bin", f"{server.base}/flaky/9/a.bin")
    with pytest.raises(DownloadFailed) as exc:
        fetch(store, [art], progress=False, retries=1)
    msg = str(exc.value)
    assert "a.bin 1" in msg
    assert f"{server.base}/nowhere/a.bin: HTTP 404" in msg
    assert f"{server.base}/flaky/9/a.bin: HTTP 503" in msg
    assert isinstance(exc.value, FetchError)
    assert leftovers(store) == []


def test_retry_after_503(server: ServerState, store: Store) -> None:
    data, digest = serve(server, "a.bin")
    art = artifact("a.bin", data, f"{server.base}/flaky/2/a.bin")
    assert fetch(store, [art], progress=False, retries=3).downloaded == 1
    assert server.hits["/flaky/2/a.bin"] == 3
    assert store.vendor_path(digest).read_bytes() == data


def test_resume_partial_with_range(server: ServerState, store: Store) -> None:
    data, digest = serve(server, "a.bin")
    store.vendor.mkdir(parents=True)
    (store.vendor / f"{digest}.partial").write_bytes(data[:100_000])
    report = fetch(store, [artifact("a.bin", data, f"{server.base}/files/a.bin")], progress=False)
    assert server.log == [("/files/a.bin", "bytes=100000-")]
    assert report.bytes == len(data) - 100_000
    assert store.vendor_path(digest).read_bytes() == data
    assert leftovers(store) == []


def test_resume_when_server_ignores_range(server: ServerState, store: Store) -> None:
    data, digest = serve(server, "a.bin")
    store.vendor.mkdir(parents=True)
    (store.vendor / f"{digest}.partial").write_bytes(data[:100_000])
    report = fetch(store, [artifact("a.bin", data, f"{server.base}/norange/a.bin")], progress=False)
    assert report.bytes == len(data)
    assert store.vendor_path(digest).read_bytes() == data


def test_corrupt_partial_is_not_trusted(server: ServerState, store: Store) -> None:
    data, digest = serve(server, "a.bin")
    store.vendor.mkdir(parents=True)
    (store.vendor / f"{digest}.partial").write_bytes(b"\0" * 100_000)  # wrong bytes, resumable length
    fetch(store, [artifact("a.bin", data, f"{server.base}/files/a.bin")], progress=False)
    # The resumed file failed its hash, so it was fetched again from the start.
    assert server.log == [("/files/a.bin", "bytes=100000-"), ("/files/a.bin", None)]
    assert store.vendor_path(digest).read_bytes() == data


def test_full_length_corrupt_partial_is_refetched(server: ServerState, store: Store) -> None:
    data, digest = serve(server, "a.bin")
    store.vendor.mkdir(parents=True)
    (store.vendor / f"{digest}.partial").write_bytes(b"\0" * len(data))
    fetch(store, [artifact("a.bin", data, f"{server.base}/files/a.bin")], progress=False)
    assert server.log == [("/files/a.bin", None)]
    assert store.vendor_path(digest).read_bytes() == data


def test_connection_dropped_midway_resumes(server: ServerState, store: Store) -> None:
    data, digest = serve(server, "a.bin")
    fetch(store, [artifact("a.bin", data, f"{server.base}/drop/a.bin")], progress=False, retries=5)
    ranges = [r for _, r in server.log]
    assert ranges[0] is None and ranges[1] == f"bytes={len(data) // 2}-"
    assert store.vendor_path(digest).read_bytes() == data


def test_parallel_fetch_of_several_files(server: ServerState, store: Store) -> None:
    arts = []
    for i in range(12):
        data, _ = serve(server, f"f{i}.bin", size=50_000 + i)
        arts.append(artifact(f"f{i}.bin", data, f"{server.base}/slow/f{i}.bin"))
    start = time.monotonic()
    report = fetch(store, arts, jobs=6, progress=False)
    elapsed = time.monotonic() - start
    assert report.downloaded == 12
    assert server.max_active > 1
    assert elapsed < 12 * 0.3  # not one after the other
    assert all(store.has_artifact(a) for a in arts)
    assert verify_store(store, arts) == []


def test_file_urls(tmp_path: Path, store: Store) -> None:
    src = tmp_path / "local dir"
    src.mkdir()
    data = b"offline bytes\n" * 1000
    (src / "x.deb").write_bytes(data)
    missing = (tmp_path / "missing.deb").as_uri()
    art = artifact("x.deb", data, missing, (src / "x.deb").as_uri())
    report = fetch(store, [art], progress=False)
    assert report.downloaded == 1
    assert store.vendor_path(art.sha256).read_bytes() == data
    bad = artifact("y.deb", b"something else", (src / "x.deb").as_uri())
    with pytest.raises(HashMismatch):
        fetch(store, [bad], progress=False)


def test_several_failures_are_all_reported(server: ServerState, store: Store) -> None:
    good, _ = serve(server, "good.bin")
    bad, _ = serve(server, "bad.bin")
    arts = [
        artifact("good.bin", good, f"{server.base}/files/good.bin"),
        artifact("bad.bin", bad, f"{server.base}/wrong/bad.bin"),
        artifact("gone.bin", b"gone", f"{server.base}/nowhere/gone.bin"),
    ]
    with pytest.raises(FetchFailures) as exc:
        fetch(store, arts, progress=False)
    assert len(exc.value.errors) == 2
    assert {type(e) for e in exc.value.errors} == {HashMismatch, DownloadFailed}
    assert store.has_artifact(arts[0])  # the others' failures did not stop it


def test_verify_store_removes_corrupt_files(server: ServerState, store: Store) -> None:
    a, _ = serve(server, "a.bin")
    b, _ = serve(server, "b.bin")
    arts = [artifact("a.bin", a, f"{server.base}/files/a.bin"), artifact("b.bin", b, f"{server.base}/files/b.bin")]
    fetch(store, arts, progress=False)
    path = store.vendor_path(arts[1].sha256)
    os.chmod(path, 0o644)
    path.write_bytes(b"x" * len(b))  # same size: has_artifact cannot tell
    assert store.has_artifact(arts[1])
    assert verify_store(store, arts, remove=False) == [arts[1]]
    assert path.exists()
    assert verify_store(store, arts) == [arts[1]]
    assert not path.exists()
    assert fetch(store, arts, progress=False).downloaded == 1


def test_no_output_when_not_a_terminal(server: ServerState, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = serve(server, "a.bin")
    report = fetch(store, [artifact("a.bin", data, f"{server.base}/files/a.bin")], progress=True)
    assert capsys.readouterr() == ("", "")  # the CLI prints the summary
    assert report.summary().startswith("fetched 1 file(s), 0.3 MB in ")
    assert report.summary().endswith("; 0 already in the store")


# --- what the store and the URLs may be trusted with (issue: hostile and damaged inputs) -----------------------


def test_loopback_needs_local_true(server: ServerState, store: Store) -> None:
    """A [[files]] URL on this machine is fetched only when the lock says local = true."""
    data, _ = serve(server, "a.bin")
    art = dataclasses.replace(artifact("a.bin", data, f"{server.base}/files/a.bin"), local=False)
    with pytest.raises(DownloadFailed) as info:
        fetch(store, [art], progress=False)
    assert "loopback" in str(info.value) and "local = true" in str(info.value)
    assert server.log == []  # refused before any request
    assert not store.vendor_path(art.sha256).exists()


def test_file_url_needs_local_true(tmp_path: Path, store: Store) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:$6$...")
    art = Artifact("file", "s", "", "s", hashlib.sha256(secret.read_bytes()).hexdigest(), 11, (secret.as_uri(),))
    with pytest.raises(DownloadFailed, match="file: URL"):
        fetch(store, [art], progress=False)
    assert not store.vendor_path(art.sha256).exists()


def test_redirect_to_this_machine_is_refused(server: ServerState, store: Store) -> None:
    """A remote host that answers with a redirect to loopback gets nothing from here either.

    The first hop is the test server too (allowed as local), the redirect target is judged on its own.
    """
    data, _ = serve(server, "a.bin")
    target = f"{server.base}/files/a.bin".replace("://", ":/")
    art = artifact("a.bin", data, f"{server.base}/redirect/{target}")
    fetch(store, [art], progress=False)  # local = true: the redirect may stay on this machine
    store.vendor_path(art.sha256).unlink()
    from buildsys.core import net

    with pytest.raises(net.URLRefused, match="loopback"):
        net.Client(net.Policy(local_ok=False)).send("GET", f"{server.base}/redirect/{target}")


def test_same_size_damage_in_the_store_is_found_and_refetched(server: ServerState, store: Store) -> None:
    data, _ = serve(server, "a.bin", size=4096)
    art = artifact("a.bin", data, f"{server.base}/files/a.bin")
    fetch(store, [art], progress=False)
    assert store.is_verified(art.sha256)
    path = store.vendor_path(art.sha256)
    path.write_bytes(bytes(len(data)))  # same size, other bytes: the old fetch said "already in the store"
    report = fetch(store, [art], progress=False)
    assert report.downloaded == 1 and report.repaired == (f"a.bin ({art.sha256})",)
    assert path.read_bytes() == data and store.is_verified(art.sha256)
    hits = len(server.log)
    again = fetch(store, [art], progress=False)  # unchanged since checked: trusted, not rehashed or fetched
    assert (again.downloaded, again.skipped, again.repaired, len(server.log)) == (0, 1, (), hits)


def test_vendor_stream_places_by_sha256_and_a_refusing_check_leaves_nothing(store: Store) -> None:
    """The one streamed placement that [[files]] and CRAN tarballs share at lock time."""
    import io

    data = b"an R source tarball, say\n" * 5000
    md5 = hashlib.md5(usedforsecurity=False)
    sha, size = store.vendor_stream(io.BytesIO(data), "t-", also=[md5])
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert store.vendor_path(sha).read_bytes() == data and md5.hexdigest() == hashlib.md5(data).hexdigest()

    other = b"not what the index promised\n"

    def refuse() -> None:
        raise HashMismatch("R package x 1.0 (MD5sum in PACKAGES)", "http://repo/x_1.0.tar.gz", "0" * 32, "1" * 32)

    with pytest.raises(HashMismatch):
        store.vendor_stream(io.BytesIO(other), "t-", check=refuse)
    assert not store.vendor_path(hashlib.sha256(other).hexdigest()).exists()
    assert not [p for p in store.tmp.iterdir() if p.name.startswith("t-")]
