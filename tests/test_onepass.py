"""One pass from a layer's files to its compressed blob: the sink of the write gives ``compress_file``'s bytes.

The first part feeds ``compress.Compressor`` and the store's ``CompressingSink`` the way ``LayerPlan.write``
does (a reused buffer, writes of any size) and compares with compressing the finished bytes; the last test
builds the chain fixture with ``build --compress gzip`` and compares each layer's blob made during the build
with the stored layer compressed afterwards, byte for byte, and has publish find them all.
"""

from __future__ import annotations

import io
import json
import os
import random
import time
from pathlib import Path

import pytest
from helpers import bs, ok
from test_compress import layer_bytes

from buildsys.core.store import Store
from buildsys.oci.compress import (
    GZIP_BLOCK,
    ZSTD_CHUNK,
    CompressedBlobs,
    CompressingSink,
    CompressionError,
    Compressor,
    compress_bytes,
    compress_file,
    method,
)
from buildsys.oci.image import OciLayout, digest_bytes
from buildsys.oci.layer.inputs import read_upper_dir
from buildsys.oci.layer.normalize import plan_layer


def feed(sink: Compressor | CompressingSink, data: bytes, seed: int) -> None:
    """``data`` written as ``_Tee`` writes it: pieces of every size, some through one reused buffer."""
    rnd = random.Random(seed)
    buf = bytearray(1 << 20)
    pos = 0
    while pos < len(data):
        n = min(len(data) - pos, rnd.choice((1, 511, 4096, 65_536, 1 << 20, 3 << 20)))
        if n <= len(buf) and rnd.random() < 0.5:  # a view of a buffer overwritten by the next write
            buf[:n] = data[pos:pos + n]
            sink.write(memoryview(buf)[:n])
        else:
            sink.write(data[pos:pos + n])
        pos += n


@pytest.mark.parametrize("fmt,threads", [("gzip", 1), ("gzip", 2), ("gzip", 3), ("zstd", 1)])
def test_the_sink_gives_the_bytes_of_compressing_the_finished_layer(fmt, threads) -> None:
    m = method(fmt)
    block = GZIP_BLOCK if fmt == "gzip" else ZSTD_CHUNK
    # empty, one byte, exactly one block, one over, and two and a half blocks (a short last one)
    for size in (0, 1, block, block + 1, 2 * block + block // 2 + 12345):
        data = layer_bytes(size, seed=size % 97)
        out = io.BytesIO()
        sink = Compressor(m, out, threads=threads, size=size)
        feed(sink, data, seed=size)
        got = sink.close(digest_bytes(data))
        expected = compress_bytes(m, data)
        assert out.getvalue() == expected, (fmt, threads, size)
        assert (got.digest, got.size, got.diff_id, got.uncompressed_size) == \
            (digest_bytes(expected), len(expected), digest_bytes(data), size)


def test_zstd_needs_the_size_and_none_compresses_nothing() -> None:
    with pytest.raises(CompressionError, match="needs the layer's size"):
        Compressor(method("zstd"), io.BytesIO())
    with pytest.raises(CompressionError, match="'none' compresses nothing"):
        Compressor(method("none"), io.BytesIO())


def test_a_kept_sink_is_the_store_entry_publish_uses_and_a_discarded_one_leaves_nothing(tmp_path) -> None:
    store = Store(tmp_path / "store")
    layout = OciLayout(store.oci)
    data = layer_bytes(GZIP_BLOCK + 4321)
    diff_id = digest_bytes(data)
    with CompressedBlobs(store).sink(method("gzip")) as sink:
        feed(sink, data, seed=3)
        kept = sink.keep(diff_id)
    layout.add_blob_bytes(data)
    assert layout.blob_path(kept.digest).read_bytes() == compress_bytes(method("gzip"), data)
    assert layout.blob_path(kept.digest).stat().st_mode & 0o777 == 0o644
    later = CompressedBlobs(store)
    assert later.get(method("gzip"), diff_id) == kept and later.made == 0  # found: nothing read again
    # A write that failed: the sink is dropped with its temporary file, and no entry names it.
    with pytest.raises(OSError), CompressedBlobs(store).sink(method("zstd"), size=len(data)) as sink:
        sink.write(data[:1000])
        raise OSError("the layer's disk is full")
    assert CompressedBlobs(store).lookup(method("zstd"), diff_id) is None
    assert list((store.root / "tmp").iterdir()) == []
    with pytest.raises(CompressionError, match="needs the layer's size"):  # refused before a file is made
        CompressedBlobs(store).sink(method("zstd"))
    assert list((store.root / "tmp").iterdir()) == []


def test_a_normalized_layer_written_with_the_sink_compresses_as_the_stored_file_does(tmp_path) -> None:
    """What ``LayerMaker._write_layers`` does, without docker: the plan written once to the layer's file and
    the sink; then the file compressed as publish did before, byte for byte the same."""
    root = tmp_path / "upper"
    (root / "usr" / "lib").mkdir(parents=True)
    for i in range(300):
        (root / "usr" / "lib" / f"m{i:03d}.py").write_bytes(layer_bytes(1000 + i * 37, seed=i))
    (root / "opt").mkdir()
    (root / "opt" / "big.bin").write_bytes(layer_bytes(GZIP_BLOCK + 99_999, seed=5))  # across a block edge
    plan = plan_layer(read_upper_dir(root), 1_700_000_000)
    store = Store(tmp_path / "store")
    layer = tmp_path / "layer.tar"
    with open(layer, "wb") as f, CompressedBlobs(store).sink(method("gzip"), size=plan.size) as sink:
        info = plan.write(f, sink)
        one_pass = sink.keep(info.digest)
    with open(os.devnull, "wb") as null:
        later = compress_file(method("gzip"), layer, null, info.digest)
    assert one_pass == later and one_pass.uncompressed_size == plan.size == layer.stat().st_size
    blob = OciLayout(store.oci).blob_path(one_pass.digest).read_bytes()
    assert blob == compress_bytes(method("gzip"), layer.read_bytes())


def test_a_registry_roots_layers_are_compressed_as_they_are_unpacked(tmp_path) -> None:
    """``baseimage.unpack_layers`` with the sink ``LayerMaker._image_root`` gives it: each of the tiny image's
    layers (vendored gzip, plain and zstd) compressed while it is decompressed into the store, byte for byte
    what compressing the stored layer gives (no docker: the root is only unpacked here)."""
    from regimage import push_tiny_image
    from shipenv import docker_registry
    from test_registry_base import project

    from buildsys.build import baseimage
    from buildsys.ecosystems.registry_image import ImageBaseLock
    from buildsys.model.lockfile import load_lock

    with docker_registry(tmp_path / "registry") as reg:
        image = push_tiny_image(reg.host)
        proj, where = project(tmp_path / "proj", image.ref(), child=None), tmp_path / "store"
        ok(bs(proj, where, "lock"))
        ok(bs(proj, where, "fetch"))
    store, m = Store(where), method("gzip")
    base = load_lock(proj, "root").get(ImageBaseLock)
    assert base is not None
    layout, blobs = OciLayout(store.oci), CompressedBlobs(store)
    layers = baseimage.unpack_layers(store, layout, "root", base, baseimage.read_config(store, "root", base),
                                     compress=lambda: blobs.sink(m))
    assert [d for d, _ in layers] == image.diff_ids and blobs.made == 3
    for diff_id, _ in layers:
        made = blobs.lookup(m, diff_id)
        assert made is not None
        later = io.BytesIO()
        assert compress_file(m, layout.blob_path(diff_id), later, diff_id) == made
        assert layout.blob_path(made.digest).read_bytes() == later.getvalue()
    assert list(store.tmp.iterdir()) == []


def test_the_build_option_is_documented_with_its_variable() -> None:
    from click.testing import CliRunner

    from buildsys.cli import cli

    out = " ".join(CliRunner().invoke(cli, ["build", "--help"]).output.split())
    assert "--compress [gzip|zstd|none]" in out and "BUILDSYS_COMPRESS" in out


# ---------------------------------------------------------------- a real build


def _layers(store: Path, ref: str) -> list[str]:
    layout = OciLayout(store / "oci")
    digest = layout.resolve(ref)
    assert digest is not None
    return [la["digest"] for la in json.loads(layout.read_blob(digest))["layers"]]


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_a_build_with_compress_writes_each_layers_blob_once_and_it_is_the_later_pass_byte_for_byte(
        shipped, registry) -> None:
    """Every layer of the chain made again (--no-cache: the same diff_ids) with --compress gzip: the Debian root
    (``LayerMaker.root``) and two child layers (``_write_layers``, streamed into docker load in the same pass)."""
    proj, store = shipped
    m = method("gzip")
    started = time.time()
    ok(bs(proj, store, "build", "--no-cache", "--compress", "gzip", "app"))
    layout = OciLayout(store / "oci")
    diff_ids = _layers(store, "app")
    assert len(diff_ids) == 3
    for diff_id in diff_ids:
        made = CompressedBlobs(Store(store)).lookup(m, diff_id)
        assert made is not None, f"{diff_id}: no compressed blob"
        entry = store / "compressed" / m.key() / f"{diff_id[7:]}.json"
        assert entry.stat().st_mtime >= started - 1, f"{diff_id}: its blob was not made by this build"
        later = io.BytesIO()
        again = compress_file(m, layout.blob_path(diff_id), later, diff_id)
        assert layout.blob_path(made.digest).read_bytes() == later.getvalue() and again == made
    out = json.loads(ok(bs(proj, store, "publish", "app", "--to", f"{registry.host}/onepass/app:v1",
                           "--json")).stdout)
    assert out["layers_compressed"] == 0  # publish read no layer to compress it
