"""Layer compression for publishing: the compressed digest is a function of the layer bytes alone.

The first half runs the compressors alone (other processes, other CPU sets, other thread counts, foreign
readers: Python's gzip, ``gzip -t``, ``zstd -t``); the second publishes the chain fixture to Debian's
docker-registry on loopback and has a docker engine that never saw the image and skopeo read it back.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from helpers import bs, ok

from buildsys.core.store import Store
from buildsys.oci import compress
from buildsys.oci.compress import (
    ANNOTATION,
    GZIP_BLOCK,
    GZIP_MEDIA_TYPE,
    ZSTD_MEDIA_TYPE,
    CompressedBlobs,
    CompressionError,
    DamagedLayer,
    compress_bytes,
    compress_file,
    decompress_stream,
    method,
)
from buildsys.oci.image import OciLayout, digest_bytes

ROOT = Path(__file__).resolve().parent.parent


def layer_bytes(size: int, seed: int = 7) -> bytes:
    """Text-like and random runs mixed, like a layer's files: compressible, but not trivially."""
    rnd = random.Random(seed)
    words = [bytes(rnd.choices(b"abcdefghijklmnopqrstuvwxyz_/.", k=rnd.randint(2, 12))) for _ in range(4000)]
    out = bytearray()
    while len(out) < size:
        if rnd.random() < 0.1:
            out += rnd.randbytes(rnd.randint(100, 20000))
        else:
            out += b" ".join(rnd.choices(words, k=200)) + b"\n"
    return bytes(out[:size])


@pytest.fixture(scope="module")
def big_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two and a half gzip blocks, so the member boundaries and the short last block are exercised."""
    path = tmp_path_factory.mktemp("layer") / "layer.tar"
    path.write_bytes(layer_bytes(2 * GZIP_BLOCK + GZIP_BLOCK // 2 + 12345))
    return path


_CHILD = """
import os, sys, json
from pathlib import Path
from buildsys.oci.compress import compress_file, method
cpus, threads = sys.argv[3], int(sys.argv[4])
if cpus != "all":
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
out = {}
for fmt in ("gzip", "zstd"):
    with open(os.devnull, "wb") as null:
        got = compress_file(method(fmt), Path(sys.argv[1]), null, threads=threads)
    out[fmt] = [got.digest, got.size, got.diff_id, sorted(os.sched_getaffinity(0))]
Path(sys.argv[2]).write_text(json.dumps(out))
"""


def in_another_process(layer: Path, tmp: Path, cpus: str, threads: int, env: dict[str, str]) -> dict[str, list]:
    result = tmp / f"result-{cpus}-{threads}.json"
    subprocess.run([sys.executable, "-c", _CHILD, str(layer), str(result), cpus, str(threads)], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT), **env}, cwd=tmp, timeout=300)
    return dict(json.loads(result.read_text()))


def test_the_digest_is_the_same_in_other_processes_cpu_sets_thread_counts_and_environments(big_layer,
                                                                                          tmp_path) -> None:
    here = {}
    for fmt in ("gzip", "zstd"):
        with open(os.devnull, "wb") as null:
            got = compress_file(method(fmt), big_layer, null, threads=2)
        here[fmt] = (got.digest, got.size)
        assert got.diff_id == digest_bytes(big_layer.read_bytes())
    cpus = sorted(os.sched_getaffinity(0))
    runs = [
        ("all", 1, {}),
        (str(cpus[0]), 4, {"OMP_NUM_THREADS": "1", "LC_ALL": "C", "PYTHONHASHSEED": "1", "TZ": "Asia/Tokyo"}),
        (str(cpus[-1]), 2, {"MALLOC_ARENA_MAX": "1", "PYTHONHASHSEED": "12345", "LANG": "de_DE.UTF-8"}),
    ]
    for cpuset, threads, env in runs:
        other = in_another_process(big_layer, tmp_path, cpuset, threads, env)
        for fmt in ("gzip", "zstd"):
            digest, size, diff_id, ran_on = other[fmt]
            assert (digest, size) == here[fmt], (fmt, cpuset, threads, env)
            assert diff_id == digest_bytes(big_layer.read_bytes())
            if cpuset != "all":
                assert ran_on == [int(cpuset)]  # the child really ran on that one CPU


def test_known_digests_of_a_fixed_input_freeze_the_methods() -> None:
    """A change of deflate, zstandard, a level or a block size changes these: then it changes the method
    string too (compress.Method.describe), and the docs' method table."""
    data = layer_bytes(300_000, seed=1)
    assert digest_bytes(data) == INPUT_300K  # the input itself did not change (Python's random is stable)
    assert method("gzip").describe() == "gzip libdeflate deflate==0.9.0 level 6 blocks 16MiB"
    assert method("zstd").describe() == ("zstd zstandard==0.25.0 libzstd 1.5.7 level 3 single-threaded "
                                         "content-size checksum chunks 1MiB")
    assert digest_bytes(compress_bytes(method("gzip"), data)) == GZIP_300K
    assert digest_bytes(compress_bytes(method("zstd"), data)) == ZSTD_300K


INPUT_300K = "sha256:9a7ec918ce89de2e544893201fb2d309505716a3297d9024e09dd7bdf1619f3c"
GZIP_300K = "sha256:ce7dbdcc6bddff55b932b836ec817caae64f4e7e5deb611899ab784c9a3183c4"
ZSTD_300K = "sha256:1073aed92e6b1d6a153ae5e90dfab18ca2bd469b7fb22db0183b80dffae35280"


def test_multi_member_gzip_is_read_whole_by_python_and_the_command_line_and_each_header_is_fixed(big_layer,
                                                                                                 tmp_path) -> None:
    data = big_layer.read_bytes()
    gz = tmp_path / "layer.tar.gz"
    with open(gz, "wb") as out:
        got = compress_file(method("gzip"), big_layer, out, digest_bytes(data))
    blob = gz.read_bytes()
    assert got.digest == digest_bytes(blob) and got.size == len(blob)
    assert gzip.decompress(blob) == data
    # Walk the members: three (two full blocks and the rest), each with the same fixed 10-byte header.
    members, rest = [], blob
    while rest:
        members.append(rest[:10])
        d = zlib.decompressobj(31)
        d.decompress(rest)
        rest = d.unused_data
    assert len(members) == 3 and set(members) == {bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 0xFF])}
    subprocess.run(["gzip", "-t", str(gz)], check=True)
    unzipped = subprocess.run(["gzip", "-dc", str(gz)], check=True, capture_output=True).stdout
    assert unzipped == data
    back = tmp_path / "back"
    with open(gz, "rb") as src, open(back, "wb") as dst:
        assert decompress_stream("gzip", src, dst) == (digest_bytes(data), len(data))


def test_zstd_is_read_by_the_command_line_with_its_content_size_and_checksum(big_layer, tmp_path) -> None:
    data = big_layer.read_bytes()
    zst = tmp_path / "layer.tar.zst"
    with open(zst, "wb") as out:
        compress_file(method("zstd"), big_layer, out)
    subprocess.run(["zstd", "-q", "-t", str(zst)], check=True)
    listing = subprocess.run(["zstd", "-lv", str(zst)], check=True, capture_output=True, text=True).stdout
    assert "Check: XXH64" in listing and f"({len(data)} B)" in listing  # content size in the frame header
    assert subprocess.run(["zstd", "-dc", str(zst)], check=True, capture_output=True).stdout == data
    back = tmp_path / "back"
    with open(zst, "rb") as src, open(back, "wb") as dst:
        assert decompress_stream("zstd", src, dst) == (digest_bytes(data), len(data))


def test_a_damaged_stream_a_bomb_and_an_unknown_method_are_named(tmp_path) -> None:
    blob = compress_bytes(method("gzip"), b"x" * 1_000_000)
    with pytest.raises(CompressionError, match="not a valid gzip stream"):
        decompress_stream("gzip", _bytes_io(blob[:-9] + b"\0" * 9), _bytes_io(b""))
    with pytest.raises(CompressionError, match="inflates to more than 1000 bytes"):
        decompress_stream("gzip", _bytes_io(blob), _bytes_io(b""), limit=1000)
    with pytest.raises(CompressionError, match="(?s)unknown compression 'brotli'.*gzip, zstd, none"):
        method("brotli")


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(data)


def test_the_store_keeps_each_compressed_layer_once_and_checks_it_before_reuse(tmp_path) -> None:
    store = Store(tmp_path / "store")
    layout = OciLayout(store.oci)
    data = layer_bytes(3_000_000)
    diff_id = layout.add_blob_bytes(data)
    blobs = CompressedBlobs(store)
    first = blobs.get(method("gzip"), diff_id)
    assert blobs.made == 1 and layout.blob_path(first.digest).read_bytes() == compress_bytes(method("gzip"), data)
    assert layout.blob_path(first.digest).stat().st_mode & 0o777 == 0o644  # readable as the other blobs
    (entry,) = (store.root / "compressed").rglob("*.json")
    assert json.loads(entry.read_text())["method"] == method("gzip").describe()
    mtimes = (entry.stat().st_mtime_ns, layout.blob_path(first.digest).stat().st_mtime_ns)
    again = CompressedBlobs(store).get(method("gzip"), diff_id)  # another process: from the index
    assert again == first and (entry.stat().st_mtime_ns, layout.blob_path(first.digest).stat().st_mtime_ns) == mtimes
    # zstd is another method: its own entry.
    other = CompressedBlobs(store)
    assert other.get(method("zstd"), diff_id).digest != first.digest and other.made == 1
    # A compressed blob cut short is not reused: it is made again.
    with open(layout.blob_path(first.digest), "r+b") as f:
        f.truncate(first.size - 1)
    fixed = CompressedBlobs(store)
    assert fixed.get(method("gzip"), diff_id) == first and fixed.made == 1
    # A damaged layer is named, and leaves no entry and no temporary file.
    bad = layout.blob_path(diff_id)
    bad.write_bytes(data[:-1] + b"!")
    shutil.rmtree(store.root / "compressed")
    with pytest.raises(DamagedLayer, match=f"{bad}: the layer read is sha256:.*, not {diff_id}"):
        CompressedBlobs(store).get(method("gzip"), diff_id)
    assert not (store.root / "compressed").exists() and list((store.root / "tmp").iterdir()) == []


# ---------------------------------------------------------------- publish, read back by others


def _manifest_of(store: Path, digest: str) -> dict:
    return dict(json.loads((store / "oci" / "blobs" / "sha256" / digest[7:]).read_bytes()))


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_publish_gzip_a_fresh_engine_pulls_the_built_image_id_and_skopeo_checks_every_blob(
        shipped, registry, second_engine, tmp_path) -> None:
    proj, store = shipped
    built = OciLayout(store / "oci").resolve("app")
    assert built is not None
    built_manifest = _manifest_of(store, built)
    out = json.loads(ok(bs(proj, store, "publish", "app", "--to", f"{registry.host}/gz/app:v1", "--json")).stdout)
    digest = out["manifest_digest"]
    assert out["built_manifest_digest"] == built and digest != built
    assert out["image_id"] == built_manifest["config"]["digest"] and out["compression"] == method("gzip").describe()
    assert out["shipped_layer_bytes"] < out["layer_bytes"] / 2
    from buildsys.oci.registry import Registry

    data, _, served = Registry(registry.host).get_manifest("gz/app", "v1")
    assert served == digest and digest_bytes(data) == digest
    pushed = json.loads(data)
    assert pushed["config"] == built_manifest["config"]
    assert [la["mediaType"] for la in pushed["layers"]] == [GZIP_MEDIA_TYPE] * 3
    assert {la["annotations"][ANNOTATION] for la in pushed["layers"]} == {method("gzip").describe()}
    ref = f"{registry.host}/gz/app@{digest}"
    second_engine.docker("pull", ref)
    try:
        assert second_engine.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip() == out["image_id"]
        run = second_engine.docker("run", "--rm", "--network", "none", ref, "cat", "/home/app/built.txt")
        assert run.stdout.strip() == "built"
    finally:
        second_engine.docker("rmi", ref, check=False)
    # skopeo reads the manifest, then every blob, checking each digest; then gunzip gives each diff_id.
    dest = tmp_path / "skopeo"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{dest}:app"], check=True,
                   capture_output=True, timeout=300)
    diff_ids = [la["digest"] for la in built_manifest["layers"]]
    for la, diff_id in zip(pushed["layers"], diff_ids, strict=True):
        with open(dest / "blobs" / "sha256" / la["digest"][7:], "rb") as src, open(os.devnull, "wb") as null:
            assert decompress_stream("gzip", src, null)[0] == diff_id


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_a_second_publish_sends_and_compresses_nothing(shipped, registry) -> None:
    proj, store = shipped
    target = f"{registry.host}/again/app:v1"
    first = json.loads(ok(bs(proj, store, "publish", "app", "--to", target, "--json")).stdout)
    entries = sorted((store / "compressed").rglob("*.json"))
    blobs = [store / "oci" / "blobs" / "sha256" / la["digest"][7:]
             for la in _manifest_of(store, first["manifest_digest"])["layers"]]
    before = [p.stat().st_mtime_ns for p in (*entries, *blobs)]
    result = ok(bs(proj, store, "publish", "app", "--to", target, "--json"))
    again = json.loads(result.stdout)
    assert again["manifest_digest"] == first["manifest_digest"]
    assert again["blobs_sent"] == 0 and again["blobs_present"] == 4 and again["layers_compressed"] == 0
    assert [p.stat().st_mtime_ns for p in (*entries, *blobs)] == before  # nothing rewritten
    plain = ok(bs(proj, store, "publish", "app", "--to", target))
    assert plain.stdout.strip().splitlines()[-1] == first["manifest_digest"]
    assert "0 compressed now" in plain.stdout


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_publish_zstd_and_none(shipped, registry, tmp_path) -> None:
    proj, store = shipped
    built = OciLayout(store / "oci").resolve("app")
    assert built is not None
    zs = json.loads(ok(bs(proj, store, "publish", "app", "--to", f"{registry.host}/zs/app:v1", "--compression",
                          "zstd", "--json")).stdout)
    pushed = _manifest_of(store, zs["manifest_digest"])
    assert [la["mediaType"] for la in pushed["layers"]] == [ZSTD_MEDIA_TYPE] * 3
    dest = tmp_path / "skopeo"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false",
                    f"docker://{registry.host}/zs/app@{zs['manifest_digest']}", f"oci:{dest}:app"],
                   check=True, capture_output=True, timeout=300)
    for la, diff_id in zip(pushed["layers"], [la["digest"] for la in _manifest_of(store, built)["layers"]],
                           strict=True):
        with open(dest / "blobs" / "sha256" / la["digest"][7:], "rb") as src, open(os.devnull, "wb") as null:
            assert decompress_stream("zstd", src, null)[0] == diff_id
    none = json.loads(ok(bs(proj, store, "publish", "app", "--to", f"{registry.host}/plain/app:v1", "--compression",
                            "none", "--json")).stdout)
    assert none["manifest_digest"] == built and none["layers_compressed"] == 0
    assert none["shipped_layer_bytes"] == none["layer_bytes"]


def test_the_cli_names_the_choices() -> None:
    from click.testing import CliRunner

    from buildsys.cli import cli

    out = CliRunner().invoke(cli, ["publish", "--help"]).output
    assert "--compression [gzip|zstd|none]" in out and "docker before 23.0" in out
    bad = CliRunner().invoke(cli, ["publish", "app", "--to", "127.0.0.1:1/x", "--compression", "brotli"])
    assert bad.exit_code == 2 and "'brotli' is not one of 'gzip', 'zstd', 'none'" in bad.output
    assert compress.DEFAULT == "gzip"


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_verify_compresses_both_builds_and_names_the_manifest_publish_pushes(shipped, registry) -> None:
    import re

    proj, store = shipped
    result = ok(bs(proj, store, "build", "--verify", "app"))
    said = " ".join(result.stdout.split())
    found = re.search(r"app: reproducible \(.*, gzip manifest (sha256:[0-9a-f]{64})\)", said)
    assert found, said[-2000:]
    out = json.loads(ok(bs(proj, store, "publish", "app", "--to", f"{registry.host}/verified/app:v1",
                           "--json")).stdout)
    assert out["manifest_digest"] == found.group(1)  # the one the rebuilt-from-nothing store gave too
    assert out["layers_compressed"] == 0  # verify kept the first store's compressed layers


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_export_writes_gzip_layers_import_stores_the_built_image_and_refuses_a_layer_of_another_diff_id(
        shipped, tmp_path) -> None:
    import tarfile

    from buildsys.ship.export import import_archive

    proj, store = shipped
    built = OciLayout(store / "oci").resolve("app")
    assert built is not None
    diff_ids = [la["digest"] for la in _manifest_of(store, built)["layers"]]
    out = tmp_path / "app.tar"
    ok(bs(proj, store, "export", "app", "-o", str(out)))
    with tarfile.open(out) as tf:
        (img,) = json.load(tf.extractfile("buildsys/export.json"))["images"]  # type: ignore[arg-type]
        shipped_manifest = json.load(tf.extractfile("blobs/sha256/" + img["manifest_digest"][7:]))  # type: ignore[arg-type]
    assert img["built_manifest_digest"] == built and img["manifest_digest"] != built
    assert [la["mediaType"] for la in shipped_manifest["layers"]] == [GZIP_MEDIA_TYPE] * 3
    # Imported (the checks and the store; docker load is test_export's): the built manifest, layers uncompressed.
    fresh = Store(tmp_path / "imported")
    (got,) = import_archive(fresh, out, None).images
    layout = OciLayout(fresh.oci)
    assert got.built == built and layout.resolve("app") == built
    assert all(layout.has_blob(d) for d in diff_ids)
    assert not any(layout.has_blob(la["digest"]) for la in shipped_manifest["layers"])
    # A store whose index names, for app's layer, a gzip blob of other bytes: the export is consistent
    # (every digest matches), and import still refuses it, naming the layer, with nothing stored.
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-al", str(store), str(copy)], check=True)
    cstore = Store(copy)
    (entry,) = (copy / "compressed").glob(f"{method('gzip').key()}/{diff_ids[-1][7:]}.json")
    other = compress_bytes(method("gzip"), layer_bytes(50_000))
    other_digest = OciLayout(cstore.oci).add_blob_bytes(other)
    data = json.loads(entry.read_text())
    entry.unlink()  # a hard link into the shipped store: replace it, never write through it
    entry.write_text(json.dumps({**data, "digest": other_digest, "size": len(other)}))
    bad = tmp_path / "bad.tar"
    ok(bs(proj, copy, "export", "app", "-o", str(bad)))
    result = bs(proj, tmp_path / "s2", "import", str(bad))
    said = " ".join(result.stderr.split())
    assert result.exit_code == 1 and f"layer {other_digest} decompresses to" in said, said
    assert f"not its config's diff_id {diff_ids[-1]}" in said and "nothing was imported" in said
    assert not (tmp_path / "s2" / "oci" / "blobs").exists() or not list((tmp_path / "s2" / "oci" / "blobs").rglob("*"))


def test_a_layer_descriptor_round_trips_with_its_other_keys_and_annotations() -> None:
    from buildsys.oci.compress import Compressed, built_descriptor, compressed_descriptor

    diff_id, blob = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    plain: dict[str, Any] = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": diff_id, "size": 1000}
    noted: dict[str, Any] = {**plain, "annotations": {"org.example.note": "kept"}}
    for built in (plain, noted):
        shipped = compressed_descriptor(built, method("gzip"), Compressed(blob, 300, diff_id, 1000))
        assert shipped["mediaType"] == GZIP_MEDIA_TYPE and (shipped["digest"], shipped["size"]) == (blob, 300)
        assert shipped["annotations"] == {**built.get("annotations", {}), ANNOTATION: method("gzip").describe()}
        assert built_descriptor(shipped, diff_id, 1000) == built


@pytest.mark.docker
@pytest.mark.network
@pytest.mark.slow
def test_a_zstd_cache_entry_is_decompressed_into_the_built_layers(shipped, registry, tmp_path) -> None:
    from buildsys.oci.registry import Registry

    proj, store = shipped
    ref = f"{registry.host}/zcache/chain"
    ok(bs(proj, store, "build", "--cache-to", ref, "--cache-compression", "zstd", "app"))
    reg = Registry(registry.host)
    tags = json.loads(reg.request("GET", "/v2/zcache/chain/tags/list").read(1 << 20, "tags"))["tags"]
    layers = [la for t in tags for la in json.loads(reg.get_manifest("zcache/chain", t)[0])["layers"]]
    assert len(tags) == 3 and {la["mediaType"] for la in layers} == {ZSTD_MEDIA_TYPE}
    (built,) = json.loads(ok(bs(proj, store, "build", "--json", "app")).stdout)
    result = ok(bs(proj, tmp_path / "fresh", "build", "--cache-from", ref, "--json", "app"))
    (image,) = json.loads(result.stdout)
    assert (image["image_id"], image["manifest_digest"], image["diff_ids"]) == \
        (built["image_id"], built["manifest_digest"], built["diff_ids"])
    assert result.stderr.count("remote cache") == 3
