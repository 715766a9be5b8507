"""Crafted archives for ``import`` and ``fetch --from-bundle`` (issue 25): bounded, declared, no litter.

The archives here are small real ones (an OCI image of one layer, a bundle of
two files) written in the same format as ``export`` / ``fetch --bundle`` write
them, then crafted: an undeclared member, a sparse member, a member larger
than declared, a huge JSON listing. Every case must stop before a byte is
written to the store, with an error naming the archive and the member. The
litter cases kill a real process with SIGKILL mid-write and check that the
next run sweeps what it left. No docker: ``import_archive`` is called without
an engine (loading into docker is tested in test_export.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from buildsys.core.archive import JSON_CAP, OutputFull, owned_open, sweep_partials
from buildsys.core.store import Artifact, Store
from buildsys.fetch.bundle import BundleError, read_bundle, write_bundle
from buildsys.oci.image import OciLayout
from buildsys.ship.export import ArchiveError, import_archive

ROOT = Path(__file__).resolve().parent.parent


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def member(name: str, size: int = 0, type_: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.type, ti.mode, ti.mtime = size, type_, 0o644, 0
    return ti


def image_members(layer_size: int = 300_000) -> dict[str, bytes]:
    """The members of a real export of one image ``app`` of one layer: name -> bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        data = bytes(range(256)) * (layer_size // 256)
        t.addfile(member("data.bin", len(data)), io.BytesIO(data))
    layer = buf.getvalue()
    diff_id = "sha256:" + sha(layer)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": "sha256:" + sha(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                       "digest": diff_id, "size": len(layer)}]}).encode()
    lock = b"version = 1\nrecipe = \"app\"\n"
    meta = {"version": 1, "images": [{"recipe": "app", "chain": ["app"], "manifest_digest": "sha256:" + sha(manifest),
                                      "image_id": "sha256:" + sha(config), "diff_ids": [diff_id]}],
            "files": {"buildsys/locks/app.lock": sha(lock)}}
    return {f"blobs/sha256/{sha(b)}": b for b in (layer, config, manifest)} | {
        "buildsys/locks/app.lock": lock, "buildsys/export.json": json.dumps(meta).encode(),
        "oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}


def write_tar(path: Path, members: dict[str, bytes],
              extra: Sequence[tuple[tarfile.TarInfo, bytes | None]] = ()) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in members.items():
            t.addfile(member(name, len(data)), io.BytesIO(data))
        for ti, payload in extra:
            t.addfile(ti, None if payload is None else io.BytesIO(payload))
    return path


def pax_sparse(name: str, data: bytes, realsize: int) -> tuple[tarfile.TarInfo, bytes]:
    """A PAX 1.0 sparse member (what GNU tar --sparse --format=pax writes): ``data`` at offset 0 of a
    file of ``realsize`` bytes, the rest a hole."""
    sparse_map = f"1\n0\n{len(data)}\n".encode()
    body = sparse_map + b"\0" * (-len(sparse_map) % 512) + data
    ti = member(name, len(body))
    ti.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": name,
                      "GNU.sparse.realsize": str(realsize)}
    return ti, body


def nothing_written(store: Path) -> None:
    for sub in ("oci", "vendor"):
        assert not any(p.is_file() for p in (store / sub).rglob("*")), f"{sub} holds files"
    assert not (store / "tmp").exists() or not list((store / "tmp").iterdir())


def du(path: Path) -> int:
    """Bytes allocated under ``path`` (sparse holes do not count)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------- import


def test_a_well_formed_archive_imports(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "ok.tar", image_members())
    got = import_archive(Store(tmp_path / "store"), archive, None)
    assert [i.recipe for i in got.images] == ["app"] and got.blobs == 3
    assert set(OciLayout(tmp_path / "store" / "oci").refs()) == {"app"}


def test_an_undeclared_member_is_refused_before_a_byte_is_written(tmp_path: Path) -> None:
    junk = os.urandom(100_000)
    for name in ("blobs/sha256/" + sha(junk), "buildsys/extra.json", "somewhere/else"):
        archive = write_tar(tmp_path / "undeclared.tar", {**image_members(), name: junk})
        store = tmp_path / "store"
        with pytest.raises(ArchiveError) as e:
            import_archive(Store(store), archive, None)
        assert e.value.member == name and "not declared" in str(e.value) and "nothing was imported" in str(e.value)
        nothing_written(store)


def test_a_sparse_member_is_refused_from_its_header(tmp_path: Path) -> None:
    """GNU sparse (type S) of 4 GiB that takes a few KB: once written out it filled the store."""
    members = image_members()
    layer = next(n for n, d in members.items() if n.startswith("blobs/") and len(d) > 100_000)
    data = members.pop(layer)
    gnu = tmp_path / "gnu.tar"
    with tarfile.open(gnu, "w", format=tarfile.GNU_FORMAT) as t:
        for name, d in members.items():
            t.addfile(member(name, len(d)), io.BytesIO(d))
        sparse = member(layer, len(data))
        sparse.type = tarfile.GNUTYPE_SPARSE
        sparse.sparse = [(0, len(data))]  # type: ignore[assignment]  # typeshed says bytes; tarfile writes a map
        t.addfile(sparse, io.BytesIO(data))
    store = tmp_path / "store"
    with pytest.raises(ArchiveError) as e:
        import_archive(Store(store), gnu, None)
    assert "sparse" in str(e.value) or "not a regular file" in str(e.value), str(e.value)
    nothing_written(store)
    # PAX sparse (GNU.sparse.* records, what GNU tar --sparse writes in pax format)
    pax = write_tar(tmp_path / "pax.tar", members, [pax_sparse(layer, data, 4 << 30)])
    with tarfile.open(pax) as t:
        assert t.getmember(layer).issparse() and t.getmember(layer).size == 4 << 30  # what tarfile would write out
    with pytest.raises(ArchiveError) as e:
        import_archive(Store(store), pax, None)
    assert "sparse" in str(e.value)
    nothing_written(store)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_links_and_devices_are_refused(tmp_path: Path, kind: bytes) -> None:
    ti = member("buildsys/locks/app.lock", 0, kind)
    ti.linkname = "/etc/shadow"
    members = image_members()
    members.pop("buildsys/locks/app.lock")
    store = tmp_path / "store"
    with pytest.raises(ArchiveError) as e:
        import_archive(Store(store), write_tar(tmp_path / "link.tar", members, [(ti, None)]), None)
    assert e.value.member == "buildsys/locks/app.lock" and "refused" in str(e.value)
    nothing_written(store)


def test_a_member_larger_than_its_manifest_declares_is_refused(tmp_path: Path) -> None:
    members = image_members()
    layer = next(n for n, d in members.items() if n.startswith("blobs/") and len(d) > 100_000)
    members[layer] += b"\0" * 50_000_000  # the header says 50 MB more than the manifest's layer size
    store = tmp_path / "store"
    with pytest.raises(ArchiveError) as e:
        import_archive(Store(store), write_tar(tmp_path / "big.tar", members), None)
    assert e.value.member == layer and "its manifest declares" in str(e.value)
    nothing_written(store)


def test_a_second_member_of_one_name_is_refused(tmp_path: Path) -> None:
    members = image_members()
    lock = members["buildsys/locks/app.lock"]
    store = tmp_path / "store"
    with pytest.raises(ArchiveError) as e:
        import_archive(Store(store), write_tar(tmp_path / "twice.tar", members,
                                               [(member("buildsys/locks/app.lock", len(lock)), lock)]), None)
    assert "a second member" in str(e.value)
    nothing_written(store)


def test_a_huge_json_listing_is_refused_unread(tmp_path: Path) -> None:
    """A 300 MB export.json (sparse on disk here, so the test is cheap) was read whole into memory."""
    members = image_members()
    members.pop("buildsys/export.json")
    archive = write_tar(tmp_path / "huge.tar", members)
    # Append a member whose header claims 300 MB, then the data as a hole, then the end blocks.
    size = 300 << 20
    data_end = _end_of_members(archive)
    with open(archive, "r+b") as f:
        f.seek(data_end)
        f.write(member("buildsys/export.json", size).tobuf(tarfile.PAX_FORMAT))
        f.truncate(f.tell() + size + (-size % 512) + 1024)
    store = tmp_path / "store"
    rss = _max_rss_of(f"""
        from pathlib import Path
        from buildsys.core.store import Store
        from buildsys.ship.export import ArchiveError, import_archive
        try:
            import_archive(Store(Path({str(store)!r})), Path({str(archive)!r}), None)
        except ArchiveError as e:
            print("REFUSED", e)
    """)
    assert rss < 150 << 20, f"{rss >> 20} MiB"
    with pytest.raises(ArchiveError) as e:
        import_archive(Store(store), archive, None)
    assert f"over the {JSON_CAP >> 20} MiB cap" in str(e.value) and e.value.member == "buildsys/export.json"
    nothing_written(store)


def _end_of_members(archive: Path) -> int:
    with tarfile.open(archive) as t:
        last = t.getmembers()[-1]
        return last.offset_data + -(-last.size // 512) * 512


def _max_rss_of(code: str) -> int:
    """Peak RSS (bytes) of a child Python that runs ``code``: its own VmHWM. Not getrusage's ru_maxrss,
    which Linux carries across fork+exec, so a child of a big pytest process reports the parent's peak."""
    script = textwrap.dedent(code) + \
        "\nprint('MAXRSS', int(next(ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:'))))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout
    return int(out.rsplit("MAXRSS", 1)[1].split()[0]) * 1024


def test_a_truncated_archive_is_refused(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "ok.tar", image_members())
    whole = archive.read_bytes()
    for cut in (len(whole) // 2, _end_of_members(archive), 700):
        (tmp_path / "cut.tar").write_bytes(whole[:cut])
        store = tmp_path / "store"
        with pytest.raises(ArchiveError) as e:
            import_archive(Store(store), tmp_path / "cut.tar", None)
        assert "truncated" in str(e.value), str(e.value)
        nothing_written(store)


# ---------------------------------------------------------------- bundles


def vendored(store: Store, *payloads: bytes) -> list[Artifact]:
    arts: list[Artifact] = []
    for data in payloads:
        path = store.vendor_path(sha(data))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        arts.append(Artifact("file", f"f{len(arts)}", "1", f"f{len(arts)}.bin", sha(data), len(data), ()))
    return arts


def test_a_bundle_member_it_does_not_list_or_of_another_size_is_refused(tmp_path: Path) -> None:
    src = Store(tmp_path / "src")
    bundle = tmp_path / "b.tar"
    write_bundle(src, vendored(src, b"one" * 1000, b"two" * 1000), bundle)
    with tarfile.open(bundle) as t:
        members = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}  # type: ignore[union-attr]
    junk = os.urandom(5000)
    store = tmp_path / "dst"
    for name, crafted in [(f"sha256/{sha(junk)}", {**members, f"sha256/{sha(junk)}": junk}),
                          ("etc/cron.d/x", {**members, "etc/cron.d/x": junk}),
                          (f"sha256/{sha(b'one' * 1000)}", {**members, f"sha256/{sha(b'one' * 1000)}":
                                                            b"one" * 1000 + b"\0" * 10_000_000})]:
        with pytest.raises(BundleError) as e:
            read_bundle(Store(store), write_tar(tmp_path / "crafted.tar", crafted))
        assert e.value.member == name, str(e.value)
        nothing_written(store)
    # a sparse member, by its PAX records
    with pytest.raises(BundleError) as e:
        read_bundle(Store(store), write_tar(tmp_path / "sparse.tar", members,
                                            [pax_sparse(f"sha256/{sha(junk)}", junk, 8 << 30)]))
    assert "sparse" in str(e.value)
    nothing_written(store)
    # and the honest bundle reads
    assert read_bundle(Store(store), bundle).added == 2


def test_a_huge_bundle_json_is_refused(tmp_path: Path) -> None:
    listing = json.dumps({"version": 1, "files": [{"sha256": "0" * 64, "size": 1}] * 200_000}).encode()
    assert len(listing) > JSON_CAP
    store = tmp_path / "dst"
    with pytest.raises(BundleError) as e:
        read_bundle(Store(store), write_tar(tmp_path / "huge.tar", {"bundle.json": listing}))
    assert e.value.member == "bundle.json" and "cap" in str(e.value)
    nothing_written(store)


# ---------------------------------------------------------------- litter of killed runs


def _start(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def _kill_when_ready(proc: subprocess.Popen[str]) -> None:
    with proc:  # closes its stdout pipe, which would be an unclosed file wherever the GC found it
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "READY"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_an_import_killed_mid_write_leaves_scratch_that_the_next_import_sweeps(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "ok.tar", image_members(layer_size=20_000_000))
    store = tmp_path / "store"
    # The child stops (sleeps) at its second blob, after the first is in scratch; then it is killed.
    proc = _start(f"""
        import time
        from pathlib import Path
        from buildsys.core.store import Store
        from buildsys.ship.export import import_archive
        seen = []
        def progress(r, s, d):
            if s == "check":
                seen.append(d)
                if len(seen) == 2:
                    print("READY", flush=True)
                    time.sleep(600)
        import_archive(Store(Path({str(store)!r})), Path({str(archive)!r}), None, progress=progress)
    """)
    _kill_when_ready(proc)
    left = list((store / "tmp").iterdir())
    assert [p.name.startswith(f"import-{proc.pid}-") for p in left] == [True] and du(store / "tmp") > 0
    said: list[str] = []
    import_archive(Store(store), archive, None, progress=lambda r, s, d: said.append(f"{s}: {d}"))
    assert not list((store / "tmp").iterdir())
    assert any(s.startswith("cleanup: removed 1 scratch folder") for s in said)


def test_a_bundle_or_export_killed_mid_write_leaves_a_partial_that_the_next_one_sweeps(tmp_path: Path) -> None:
    src = Store(tmp_path / "src")
    arts = vendored(src, os.urandom(5_000_000), os.urandom(5_000_000))
    out = tmp_path / "out" / "vendor.tar"
    out.parent.mkdir()
    (out.parent / ".other.partial.elsewhere-1.abc.tmp").write_bytes(b"another host's")  # not ours to judge
    proc = _start(f"""
        import time
        from pathlib import Path
        from buildsys.core.store import Artifact, Store
        from buildsys.fetch.bundle import write_bundle
        arts = [Artifact(*a) for a in {[(a.kind, a.name, a.version, a.filename, a.sha256, a.size, ()) for a in arts]!r}]
        n = []
        def progress(r, s, d):
            n.append(d)
            if len(n) == 2:
                print("READY", flush=True)
                time.sleep(600)
        write_bundle(Store(Path({str(src.root)!r})), arts, Path({str(out)!r}), progress=progress)
    """)
    _kill_when_ready(proc)
    partials = [p for p in out.parent.iterdir() if p.name.startswith(".vendor.tar.partial.")]
    assert len(partials) == 1 and partials[0].stat().st_size > 1_000_000 and f"-{proc.pid}." in partials[0].name
    said: list[str] = []
    write_bundle(src, arts, out, progress=lambda r, s, d: said.append(f"{s}: {d}"))
    assert sorted(p.name for p in out.parent.iterdir()) == [".other.partial.elsewhere-1.abc.tmp", "vendor.tar"]
    assert any(s.startswith("cleanup: removed .vendor.tar.partial.") for s in said)


def test_a_live_writer_s_partial_is_left_alone(tmp_path: Path) -> None:
    with owned_open(tmp_path / "x.tar") as f:
        f.write(b"half")
        assert sweep_partials(tmp_path) == []
        assert len(list(tmp_path.iterdir())) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["x.tar"]


def test_an_error_removes_the_partial(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), owned_open(tmp_path / "x.tar") as f:
        f.write(b"half")
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


def test_a_full_output_disk_is_named_not_the_store(tmp_path: Path, small_disk: Path) -> None:
    src = Store(tmp_path / "src")
    arts = vendored(src, os.urandom(60_000_000), os.urandom(60_000_000))  # 120 MB onto a 100 MB disk
    with pytest.raises(OutputFull) as e:
        write_bundle(src, arts, small_disk / "vendor.tar")
    said = str(e.value)
    assert str(small_disk) in said and str(src.root) not in said and "free space on" in said
    assert list(small_disk.iterdir()) == []


def test_time_and_memory_of_a_refused_import_are_small(tmp_path: Path) -> None:
    """A 2 GiB sparse layer (a few KB on disk) is refused from its header: no GBs written, no GB of RSS."""
    members = image_members()
    layer = next(n for n, d in members.items() if n.startswith("blobs/") and len(d) > 100_000)
    archive = write_tar(tmp_path / "sparse.tar", members, [pax_sparse(layer, members.pop(layer), 2 << 30)])
    store = tmp_path / "store"
    started = time.monotonic()
    with pytest.raises(ArchiveError):
        import_archive(Store(store), archive, None)
    assert time.monotonic() - started < 5
    assert du(store) < 1 << 20
