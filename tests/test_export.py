"""``export`` / ``import`` between two docker engines, and the vendor bundle (``fetch --bundle``).

The import happens on a second dockerd that never saw the images. The faults
(truncated, tampered, incomplete archive, full disk) come first and must leave
nothing loaded there and nothing in the store.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import bs, ok

from buildsys.core.store import Store
from buildsys.oci.image import OciLayout

pytestmark = [pytest.mark.docker, pytest.mark.network, pytest.mark.slow]


@pytest.fixture(scope="module")
def archive(shipped, tmp_path_factory: pytest.TempPathFactory) -> Path:
    proj, store = shipped
    out = tmp_path_factory.mktemp("export") / "chain.tar"
    ok(bs(proj, store, "export", "app", "tools", "-o", str(out)))
    return out


def images(shipped) -> dict[str, str]:
    """recipe -> image id, as the exporting store has them."""
    _, store = shipped
    layout = OciLayout(store / "oci")
    refs = layout.refs()
    return {name: layout.read_image(refs[name])[0]["config"]["digest"] for name in ("app", "tools")}


def members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tf:
        return {m.name: m for m in tf.getmembers()}


def rewrite(src: Path, dst: Path, name: str, change) -> None:
    """A copy of the archive with one member's bytes changed (same size)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None  # type: ignore[union-attr]
            if m.name == name:
                data = change(data)
            tout.addfile(m, None if data is None else io.BytesIO(data))


@pytest.fixture
def engine2(second_engine, monkeypatch) -> Iterator:
    monkeypatch.setenv("DOCKER_HOST", second_engine.host)
    yield second_engine


def has_image(engine, image_id: str) -> bool:
    return engine.docker("image", "inspect", image_id, check=False).returncode == 0


def nothing_imported(engine, shipped, store: Path) -> None:
    for image_id in images(shipped).values():
        assert not has_image(engine, image_id)
    assert OciLayout(store / "oci").refs() == {}
    blobs = store / "oci" / "blobs" / "sha256"
    assert not blobs.exists() or not list(blobs.iterdir())
    assert not (store / "tmp").exists() or not list((store / "tmp").iterdir())


def test_the_archive_is_an_oci_layout_with_locks_digests_and_sboms(archive: Path, shipped) -> None:
    proj, store = shipped
    names = members(archive)
    assert {"oci-layout", "index.json", "manifest.json", "buildsys/export.json", "buildsys/locks/root.lock",
            "buildsys/locks/tools.lock", "buildsys/locks/app.lock", "buildsys/sbom/app.cdx.json",
            "buildsys/sbom/tools.cdx.json"} <= set(names)
    assert all(m.mtime == 0 and m.uname == "" for m in names.values())
    with tarfile.open(archive) as tf:
        meta = json.load(tf.extractfile("buildsys/export.json"))  # type: ignore[arg-type]
        index = json.load(tf.extractfile("index.json"))  # type: ignore[arg-type]
        lock = tf.extractfile("buildsys/locks/app.lock").read()  # type: ignore[union-attr]
    assert meta["version"] == 1
    assert {i["recipe"]: i["image_id"] for i in meta["images"]} == images(shipped)
    assert lock == (proj / "locks" / "app.lock").read_bytes()
    assert {m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]} == {"app", "tools"}
    # Deterministic: the same images give the same archive bytes.
    again = archive.parent / "again.tar"
    ok(bs(proj, store, "export", "tools", "app", "-o", str(again)))
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(archive.read_bytes()).digest()
    again.unlink()


def test_a_truncated_archive_is_refused_with_nothing_loaded(archive: Path, shipped, engine2, tmp_path) -> None:
    proj, _ = shipped
    cut = tmp_path / "cut.tar"
    with open(archive, "rb") as f:
        cut.write_bytes(f.read(archive.stat().st_size // 2))
    store = tmp_path / "store"
    result = bs(proj, store, "import", str(cut))
    assert result.exit_code == 1, result.output
    assert "truncated" in result.stderr and "nothing was imported" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    nothing_imported(engine2, shipped, store)


def test_a_tampered_layer_is_refused_with_nothing_loaded(archive: Path, shipped, engine2, tmp_path) -> None:
    proj, _ = shipped
    biggest = max((m for m in members(archive).values() if m.name.startswith("blobs/")), key=lambda m: m.size)
    bad = tmp_path / "tampered.tar"
    rewrite(archive, bad, biggest.name, lambda d: d[:1000] + bytes([d[1000] ^ 1]) + d[1001:])
    store = tmp_path / "store"
    result = bs(proj, store, "import", str(bad))
    assert result.exit_code == 1
    assert biggest.name.rsplit("/", 1)[1] in result.stderr and "does not match its digest" in result.stderr
    nothing_imported(engine2, shipped, store)


def test_a_crafted_archive_whose_hashes_all_match_is_refused_by_name(archive: Path, shipped, engine2,
                                                                    tmp_path) -> None:
    """export.json's manifest digest pointed at a layer blob: every hash checks, the JSON does not parse."""
    proj, _ = shipped
    layer = max((m for m in members(archive).values() if m.name.startswith("blobs/")), key=lambda m: m.size)

    def point_at_layer(data: bytes) -> bytes:  # the same length: rewrite() keeps the member's size
        manifest = json.loads(data)["images"][0]["manifest_digest"]
        return data.replace(manifest.encode(), ("sha256:" + layer.name.rsplit("/", 1)[1]).encode())

    bad = tmp_path / "crafted.tar"
    rewrite(archive, bad, "buildsys/export.json", point_at_layer)
    store = tmp_path / "store"
    result = bs(proj, store, "import", str(bad))
    assert result.exit_code == 1, result.output + result.stderr
    said = " ".join(result.stderr.split())  # the error line may wrap
    assert "its manifest or config is not an OCI one" in said and "nothing was imported" in said
    assert "Traceback" not in result.output + result.stderr
    nothing_imported(engine2, shipped, store)


def test_a_tampered_lock_or_a_missing_blob_is_refused(archive: Path, shipped, engine2, tmp_path) -> None:
    proj, _ = shipped
    bad = tmp_path / "lock.tar"
    rewrite(archive, bad, "buildsys/locks/app.lock", lambda d: d.replace(b"recipe", b"recipf", 1))
    store = tmp_path / "store"
    result = bs(proj, store, "import", str(bad))
    assert result.exit_code == 1 and "app.lock" in result.stderr and "sha256" in result.stderr
    nothing_imported(engine2, shipped, store)

    small = min((m for m in members(archive).values() if m.name.startswith("blobs/") and m.size > 10000),
                key=lambda m: m.size)  # app's own layer
    gone = tmp_path / "missing.tar"
    with tarfile.open(archive) as tin, tarfile.open(gone, "w", format=tarfile.PAX_FORMAT) as tout:
        for m in tin.getmembers():
            if m.name != small.name:
                tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
    result = bs(proj, store, "import", str(gone))
    assert result.exit_code == 1 and "is missing" in result.stderr
    nothing_imported(engine2, shipped, store)



def test_a_full_disk_during_import_loads_nothing(archive: Path, shipped, engine2, small_disk: Path) -> None:
    proj, _ = shipped
    result = bs(proj, small_disk, "import", str(archive))
    assert result.exit_code == 1
    assert "no space left" in result.stderr and "Traceback" not in result.output + result.stderr
    nothing_imported(engine2, shipped, small_disk)


def test_docker_load_reads_the_archive_as_it_is(archive: Path, shipped, second_engine) -> None:
    out = second_engine.docker("load", "-i", str(archive)).stdout
    ids = images(shipped)
    assert "app:latest" in out and "tools:latest" in out
    for name, image_id in ids.items():
        assert second_engine.docker("image", "inspect", "--format", "{{.Id}}", f"{name}:latest").stdout.strip() \
            == image_id
    second_engine.docker("rmi", "app:latest", "tools:latest")
    assert not has_image(second_engine, ids["app"])


def test_import_on_an_engine_that_never_saw_the_images(archive: Path, shipped, engine2, tmp_path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    proj, _ = shipped
    store = tmp_path / "store"
    result = ok(bs(proj, store, "import", str(archive)))
    ids = images(shipped)
    for name, image_id in ids.items():
        assert f"{name}: imported as {name}:latest, image {image_id}" in result.stdout
        assert engine2.docker("image", "inspect", "--format", "{{.Id}}", f"{name}:latest").stdout.strip() == image_id
    run = engine2.docker("run", "--rm", "--network", "none", "app:latest", "sh", "-c", "cat /home/app/built.txt")
    assert run.stdout.strip() == "built"
    # the importing store holds the images by their digests, as a build would have left them
    assert set(OciLayout(store / "oci").refs()) == {"app", "tools"}
    # ... and buildsys itself uses them there, with no vendored input to build from
    assert "6 passed, 0 failed" in ok(bs(proj, store, "test", "app")).stderr
    monkeypatch.chdir(tmp_path)
    got = bs(proj, store, "run", "app", "--", "cat", "/home/app/built.txt")
    assert got.exit_code == 0 and got.stdout.strip() == "built", got.output + got.stderr
    engine2.docker("rmi", "app:latest", "tools:latest")


def test_the_vendor_store_moves_in_a_bundle_every_file_checked(shipped, tmp_path) -> None:
    proj, store = shipped
    bundle = tmp_path / "vendor.tar"
    result = ok(bs(proj, store, "fetch", "tools", "--bundle", str(bundle)))
    assert "fetch --from-bundle" in result.stdout
    fresh = tmp_path / "offline"
    got = ok(bs(proj, fresh, "fetch", "--from-bundle", str(bundle)))
    count = len([m for m in members(bundle) if m.startswith("sha256/")])
    assert f"{count} added" in got.stdout
    for name in (m for m in members(bundle) if m.startswith("sha256/")):
        sha = name.split("/")[1]
        assert Store(fresh).is_verified(sha)
        assert hashlib.sha256((fresh / "vendor" / name).read_bytes()).hexdigest() == sha
    # a tampered bundle: the bad file is named and not kept
    first = next(m for m in members(bundle) if m.startswith("sha256/"))
    bad = tmp_path / "bad.tar"
    rewrite(bundle, bad, first, lambda d: bytes([d[0] ^ 1]) + d[1:])
    other = tmp_path / "other"
    result = bs(proj, other, "fetch", "--from-bundle", str(bad))
    assert result.exit_code == 1 and "does not match its hash" in result.stderr
    assert not (other / "vendor" / first).exists()


def test_an_export_killed_late_leaves_a_partial_that_the_next_export_sweeps(shipped, tmp_path) -> None:
    """Issue 25: kill -9 after the first blob is written; the partial archive stays until the next export."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    proj, store = shipped
    out = tmp_path / "out" / "chain.tar"
    out.parent.mkdir()
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        import buildsys.ship.export as ex
        first = ex.checked_chunks
        def then_stop(path, digest):
            yield from first(path, digest)
            print("READY", flush=True)
            time.sleep(600)
        ex.checked_chunks = then_stop
        from buildsys.cli import cli
        cli(["-C", {str(proj)!r}, "--store", {str(store)!r}, "export", "app", "-o", {str(out)!r}])
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    with child:  # closes its stdout (left open, it was a ResourceWarning wherever the GC ran next)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "READY"
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
    (partial,) = out.parent.iterdir()
    assert partial.name.startswith(".chain.tar.partial.") and f"-{child.pid}." in partial.name
    result = ok(bs(proj, store, "export", "app", "-o", str(out)))
    assert [p.name for p in out.parent.iterdir()] == ["chain.tar"]
    assert "left by an interrupted export" in " ".join(result.stderr.split())  # the line may wrap


def test_a_full_output_disk_is_named_not_the_store(shipped, small_disk: Path) -> None:
    """The archive (about 220 MB uncompressed; 76 MB gzipped would fit) onto a 100 MB file system: the error
    names that folder and its mount."""
    proj, store = shipped
    result = bs(proj, store, "export", "app", "tools", "--compression", "none", "-o", str(small_disk / "chain.tar"))
    assert result.exit_code == 1, result.output + result.stderr
    said = " ".join(result.stderr.split())
    assert f"in {small_disk}, on the file system mounted at {small_disk}" in said, said
    assert f"free space on {small_disk}" in said and str(store) not in said and "Traceback" not in said
    assert list(small_disk.iterdir()) == []
