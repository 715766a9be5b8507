"""Layer compression for what leaves the machine: one pinned method per format.

The store keeps layers uncompressed (their digest is the diff_id). A registry
or an archive gets them compressed, and the compressed digest goes into the
manifest a user pins, so it must be a function of the layer bytes alone: not
of the machine's zlib, its CPU, the number of threads or how reads happen to
be split. Each method here fixes everything that could vary:

- ``gzip`` (the default): libdeflate through the ``deflate`` wheel (it bundles
  libdeflate; its match finder is portable C, with no CPU-dependent paths, so
  one version and level give the same bytes everywhere), level 6. libdeflate
  compresses whole buffers, so the layer is cut into blocks of exactly
  ``GZIP_BLOCK`` bytes of input (the last one shorter), each written as its own
  gzip member: multi-member gzip is one valid gzip stream (RFC 1952 2.2) that
  Go's reader (docker, containerd, skopeo), Python's ``gzip`` and ``gzip -d``
  all read whole. The member header libdeflate writes is fixed (no name, mtime
  0, OS 255 "unknown", XFL 0 at level 6: checked by ``_check_gzip_header``).
  Blocks are compressed on up to ``threads`` workers and written in order: the
  output does not depend on the count.
- ``zstd`` (opt-in: docker before 23 cannot pull such layers): the
  ``zstandard`` wheel's bundled libzstd, single-threaded, level 3, content size
  and checksum in the frame header, fed in chunks of exactly ``ZSTD_CHUNK``.
- ``none``: the layer as it is.

Each compressed layer carries its method string (``Method.describe``) as the
``io.buildsys.compression`` annotation of its descriptor, so anyone can redo
it and compare digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Protocol

import deflate
import zstandard

from buildsys.core.errors import BuildsysError
from buildsys.core.store import Store, atomic_write
from buildsys.oci.image import LAYER_MEDIA_TYPE, OciLayout, canonical_bytes, digest_bytes

GZIP_MEDIA_TYPE = LAYER_MEDIA_TYPE + "+gzip"
ZSTD_MEDIA_TYPE = LAYER_MEDIA_TYPE + "+zstd"
ANNOTATION = "io.buildsys.compression"
FORMATS = ("gzip", "zstd", "none")
DEFAULT = "gzip"

# 16 MiB of input per gzip member: the loss against one member is a header and
# a dictionary reset per block (0.012% on 128 MB of a real layer of the bundled stack), and a worker
# holds at most one block in and one out, so memory stays ~ 2 x 32 MiB per worker.
GZIP_BLOCK = 16 << 20
# Level 6: gzip's and docker's default. Measured on 64 MB of that layer: libdeflate 6 is smaller
# than zlib 9 (26.63 against 26.71 MB) at 3x zlib 6's speed (47 against 15 MB/s, one thread);
# libdeflate 9 saves 0.7% for 2.8x the time, 12 saves 3.4% for 9x.
GZIP_LEVEL = 6
# Level 3: zstd's and containerd's default, several times faster than gzip 6 for a
# smaller result; the higher levels are for archives written once and read rarely.
ZSTD_LEVEL = 3
ZSTD_CHUNK = 1 << 20
_READ = 1 << 20


class CompressionError(BuildsysError):
    """A compressed layer is not what it claims: another diff_id, a broken stream."""


class DamagedLayer(CompressionError):
    """The uncompressed layer read is not the one its digest names."""

    def __init__(self, source: str, expected: str, actual: str) -> None:
        self.source, self.expected, self.actual = source, expected, actual
        super().__init__(f"{source}: the layer read is {actual}, not {expected}",
                         "the store's blob is damaged: rebuild the image (`buildsys build RECIPE`)")


@dataclass(frozen=True)
class Compressed:
    """What compressing one layer gave: the blob's digest and size, and the layer's own."""

    digest: str
    size: int
    diff_id: str
    uncompressed_size: int


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:  # pragma: no cover - a vendored copy; name it by the module's own
        return "unknown"


@dataclass(frozen=True)
class Method:
    """One pinned way of compressing a layer; ``describe()`` says it all, and is its identity."""

    format: str  # gzip | zstd | none

    @property
    def media_type(self) -> str:
        return {"gzip": GZIP_MEDIA_TYPE, "zstd": ZSTD_MEDIA_TYPE, "none": LAYER_MEDIA_TYPE}[self.format]

    def describe(self) -> str:
        if self.format == "gzip":
            return f"gzip libdeflate deflate=={_version('deflate')} level {GZIP_LEVEL} blocks {GZIP_BLOCK >> 20}MiB"
        if self.format == "zstd":
            lib = ".".join(str(n) for n in zstandard.ZSTD_VERSION)
            return (f"zstd zstandard=={_version('zstandard')} libzstd {lib} level {ZSTD_LEVEL} single-threaded "
                    f"content-size checksum chunks {ZSTD_CHUNK >> 20}MiB")
        return "none"

    def key(self) -> str:
        """A short stable name of ``describe()`` for file names: changes whenever the method does."""
        return f"{self.format}-{hashlib.sha256(self.describe().encode()).hexdigest()[:16]}"


def method(name: str) -> Method:
    if name not in FORMATS:
        raise CompressionError(f"unknown compression '{name}'", f"use one of {', '.join(FORMATS)}")
    return Method(name)


def media_format(media_type: str) -> str | None:
    """The format of a layer media type (``none`` for a plain tar); None when it is no layer type we read."""
    return {GZIP_MEDIA_TYPE: "gzip", ZSTD_MEDIA_TYPE: "zstd", LAYER_MEDIA_TYPE: "none",
            "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip"}.get(media_type)


# ---------------------------------------------------------------- compressing


class _Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def _blocks(src: _Reader, size: int, h: hashlib._Hash) -> Iterator[bytes]:
    """Blocks of exactly ``size`` bytes (the last shorter), however the reads split: the output must not
    depend on them. Each is hashed as it is read."""
    while True:
        buf = bytearray()
        while len(buf) < size:
            chunk = src.read(min(_READ, size - len(buf)))
            if not chunk:
                break
            buf += chunk
        if not buf:
            return
        block = bytes(buf)
        h.update(block)
        yield block
        if len(block) < size:
            return


def _in_order(pool: ThreadPoolExecutor, work: Callable[[bytes], bytes], blocks: Iterator[bytes],
              window: int) -> Iterator[bytes]:
    """``work`` over ``blocks`` on ``pool``, results in input order, at most ``window`` blocks in flight."""
    pending: deque[Future[bytes]] = deque()
    for block in blocks:
        pending.append(pool.submit(work, block))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _gzip_block(block: bytes | bytearray) -> bytes:
    out = bytes(deflate.gzip_compress(block, GZIP_LEVEL))
    _check_gzip_header(out)
    return out


# ID1 ID2 CM=8 FLG=0 MTIME=0 XFL=0 OS=255: what libdeflate writes at level 6 (checked, never assumed).
_GZIP_HEADER = bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 0xFF])


def _check_gzip_header(member: bytes) -> None:
    if member[:10] != _GZIP_HEADER:
        raise CompressionError(f"libdeflate wrote the gzip header {member[:10].hex()}, not {_GZIP_HEADER.hex()}",
                               "the deflate package changed; pin deflate==0.9.0 (pyproject.toml)")


def _stream(m: Method, src: _Reader, h: hashlib._Hash, threads: int, size: int | None) -> Iterator[bytes]:
    if m.format == "gzip":
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="gzip") as pool:
            yield from _in_order(pool, _gzip_block, _blocks(src, GZIP_BLOCK, h), max(1, threads) + 1)
    elif m.format == "zstd":
        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=True,
                                        write_dict_id=False, threads=0)
        cobj = cctx.compressobj(size=size if size is not None else -1)
        # One worker: the compressor is used from one thread at a time, in order, while this thread
        # reads and hashes the next chunk and writes the last result.
        with ThreadPoolExecutor(1, thread_name_prefix="zstd") as pool:
            yield from _in_order(pool, cobj.compress, _blocks(src, ZSTD_CHUNK, h), 2)
        yield cobj.flush()
    else:
        yield from _blocks(src, _READ, h)


def compress_stream(m: Method, src: IO[bytes], dst: IO[bytes], *, threads: int = 2, size: int | None = None,
                    progress: Callable[[int], None] | None = None) -> Compressed:
    """Compress ``src`` into ``dst`` with ``m``, reading it once; digests of both sides.

    ``size`` (the layer's, when known) goes into a zstd frame header; the
    caller checks the result's ``diff_id`` against the digest it expected.
    ``progress`` gets the uncompressed bytes read so far, now and then.
    """
    hin, hout = hashlib.sha256(), hashlib.sha256()
    nout = 0
    counted = _Counted(src, progress)
    for chunk in _stream(m, counted, hin, threads, size):
        if chunk:
            hout.update(chunk)
            dst.write(chunk)
            nout += len(chunk)
    return Compressed("sha256:" + hout.hexdigest(), nout, "sha256:" + hin.hexdigest(), counted.n)


def compress_bytes(m: Method, data: bytes, threads: int = 2) -> bytes:
    out = io.BytesIO()
    compress_stream(m, io.BytesIO(data), out, threads=threads, size=len(data))
    return out.getvalue()


def compress_file(m: Method, path: Path, dst: IO[bytes], diff_id: str | None = None, *, threads: int = 2,
                  progress: Callable[[int], None] | None = None) -> Compressed:
    """A layer file compressed into ``dst``; with ``diff_id``, ``DamagedLayer`` when the file is not it."""
    with open(path, "rb") as src:
        got = compress_stream(m, src, dst, threads=threads, size=path.stat().st_size, progress=progress)
    if diff_id is not None and got.diff_id != diff_id:
        raise DamagedLayer(str(path), diff_id, got.diff_id)
    return got


class _Counted:
    """A reader that counts what passes and reports it every 64 MiB."""

    def __init__(self, src: IO[bytes], progress: Callable[[int], None] | None) -> None:
        self.src, self.progress, self.n, self._next = src, progress, 0, 64 << 20

    def read(self, n: int = -1, /) -> bytes:
        data = self.src.read(n)
        self.n += len(data)
        if self.progress is not None and self.n >= self._next:
            self._next += 64 << 20
            self.progress(self.n)
        return data


class Compressor:
    """Compresses a layer with ``m`` as it is written, into ``dst``: a sink for ``LayerPlan.write``.

    The bytes are ``compress_stream``'s for the whole layer, however the writes split: blocks are cut at
    the same offsets (``GZIP_BLOCK`` or ``ZSTD_CHUNK`` of input, from the first byte) and compressed by the
    same calls. Blocks are compressed on ``threads`` workers (zstd: one, its stream is sequential) while
    the writer goes on; when ``threads`` + 1 blocks are in flight, ``write`` waits for the oldest, so the
    writer runs at most that far ahead and memory stays ~ 2 x 32 MiB per worker. The layer's digest is
    the writer's (it hashed the same bytes): this side only counts them.
    """

    def __init__(self, m: Method, dst: IO[bytes], *, threads: int = 2, size: int | None = None) -> None:
        self.method, self.dst = m, dst
        self._hout = hashlib.sha256()
        self.n = self.out = 0
        self._buf = bytearray()
        self._pending: deque[Future[bytes]] = deque()
        self._tail: Callable[[], bytes] = bytes
        work: Callable[[bytes | bytearray], bytes]
        if m.format == "gzip":
            self._block, work, workers = GZIP_BLOCK, _gzip_block, max(1, threads)
        elif m.format == "zstd":
            if size is None:  # compress_file puts the layer's size in the frame header: so must this
                raise CompressionError("a zstd sink needs the layer's size", "pass size= (LayerPlan.size)")
            cobj = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=True,
                                            write_dict_id=False, threads=0).compressobj(size=size)
            self._block, work, workers, self._tail = ZSTD_CHUNK, cobj.compress, 1, cobj.flush
        else:
            raise CompressionError(f"'{m.format}' compresses nothing", "keep the layer as it is")
        self._work, self._window = work, workers + 1
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"{m.format}-sink")

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        self.n += n
        while view:
            room = self._block - len(self._buf)
            self._buf += view[:room]
            view = view[room:]
            if len(self._buf) == self._block:
                self._submit()
        return n

    def _submit(self) -> None:
        self._pending.append(self._pool.submit(self._work, self._buf))
        self._buf = bytearray()
        while self._pending and (self._pending[0].done() or len(self._pending) >= self._window):
            self._put(self._pending.popleft().result())

    def _put(self, chunk: bytes) -> None:
        if chunk:
            self._hout.update(chunk)
            self.dst.write(chunk)
            self.out += len(chunk)

    def close(self, diff_id: str) -> Compressed:
        """Compress what is left, wait for every block; ``diff_id`` is the writer's digest of the layer."""
        if self._buf:
            self._submit()
        try:
            while self._pending:
                self._put(self._pending.popleft().result())
            self._put(self._tail())
        finally:
            self._pool.shutdown(wait=True)
        return Compressed("sha256:" + self._hout.hexdigest(), self.out, diff_id, self.n)

    def abort(self) -> None:
        for f in self._pending:
            f.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)


# ---------------------------------------------------------------- decompressing


class _WriteFailed(Exception):
    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


# The most a published layer may inflate to, per byte received: deflate's own limit is ~1032:1, so a gzip
# layer beyond it is not one; zstd can go further only on degenerate data (a layer of zeros).
MAX_RATIO = 1100


def inflate_limit(compressed_size: int) -> int:
    """What a layer of ``compressed_size`` received bytes may decompress to before it is refused as a bomb."""
    return compressed_size * MAX_RATIO + (1 << 20)


def decompress_stream(fmt: str, src: IO[bytes], dst: IO[bytes], limit: int | None = None) -> tuple[str, int]:
    """Decompress ``src`` (any gzip or zstd stream, not only ours) into ``dst``; (sha256 digest, size).

    ``limit`` bounds what is written: a stream that inflates beyond it is refused (a bomb, or not the
    layer the config names) before more is held.
    """
    h = hashlib.sha256()
    n = 0

    def write(chunk: bytes) -> None:
        nonlocal n
        n += len(chunk)
        if limit is not None and n > limit:
            raise CompressionError(f"the {fmt} layer inflates to more than {limit} bytes",
                                   "it is not the layer its manifest names")
        h.update(chunk)
        try:
            dst.write(chunk)
        except OSError as e:  # the writer's failure (a full disk), not the stream's: raised as it is, below
            raise _WriteFailed(e) from e

    try:
        if fmt == "gzip":
            with gzip.GzipFile(fileobj=src, mode="rb") as g:
                while chunk := g.read(_READ):
                    write(chunk)
        elif fmt == "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True)
            while part := reader.read(_READ):
                write(bytes(part))
        else:
            while chunk := src.read(_READ):
                write(chunk)
    except _WriteFailed as e:
        raise e.error from None
    except (OSError, EOFError, zstandard.ZstdError) as e:
        raise CompressionError(f"the {fmt} layer is not a valid {fmt} stream ({e})",
                               "it was damaged in transit or is no layer: fetch it again") from e
    return "sha256:" + h.hexdigest(), n


# ---------------------------------------------------------------- the store's compressed blobs


class CompressedBlobs:
    """Compressed layers kept in the store, so a layer is compressed once per method, not per publish.

    The blobs are ordinary blobs of the store's OCI layout (``STORE/oci/blobs/sha256``); the index is one
    small JSON file per (method, layer): ``STORE/compressed/<method key>/<diff_id hex>.json`` with
    ``{version, method, diff_id, digest, size, media_type}``, written atomically after the blob is in
    place. An entry is used only when its method string is this one's and its blob is there with its
    size (a registry checks the digest of what it is sent; an export hashes every blob it writes).
    """

    VERSION = 1

    def __init__(self, store: Store) -> None:
        self.layout = OciLayout(store.oci)
        self.root = store.root / "compressed"
        self.tmp_dir = store.root / "tmp"
        self.made = 0  # layers compressed by this object (a publish that found all in the index made none)

    def _entry_path(self, m: Method, diff_id: str) -> Path:
        return self.root / m.key() / f"{diff_id.split(':', 1)[1]}.json"

    def lookup(self, m: Method, diff_id: str) -> Compressed | None:
        try:
            entry: dict[str, Any] = json.loads(self._entry_path(m, diff_id).read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        if entry.get("version") != self.VERSION or entry.get("method") != m.describe() or \
                entry.get("diff_id") != diff_id:
            return None
        digest, size = entry.get("digest"), entry.get("size")
        if not isinstance(digest, str) or not isinstance(size, int):
            return None
        try:
            if self.layout.blob_path(digest).stat().st_size != size:
                return None
        except (FileNotFoundError, BuildsysError):
            return None
        return Compressed(digest, size, diff_id, int(entry.get("uncompressed_size", 0)))

    def get(self, m: Method, diff_id: str, *, threads: int = 2,
            progress: Callable[[int], None] | None = None) -> Compressed:
        """The layer ``diff_id`` of the store compressed with ``m``: from the index, else made and kept."""
        if m.format == "none":
            path = self.layout.blob_path(diff_id)
            return Compressed(diff_id, path.stat().st_size, diff_id, path.stat().st_size)
        found = self.lookup(m, diff_id)
        if found is not None:
            return found
        fd, tmp = self._temp()
        try:
            with os.fdopen(fd, "wb") as out:
                got = compress_file(m, self.layout.blob_path(diff_id), out, diff_id, threads=threads,
                                    progress=progress)
            self._keep(m, Path(tmp), got)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return got

    def sink(self, m: Method, *, size: int | None = None, threads: int = 2) -> CompressingSink:
        """A sink that compresses a layer with ``m`` while it is written, for the store: the layer is never
        read again to be compressed (``CompressingSink``)."""
        fd, tmp = self._temp()
        out = os.fdopen(fd, "wb")
        try:
            return CompressingSink(self, m, out, Path(tmp), threads=threads, size=size)
        except BaseException:
            out.close()
            os.unlink(tmp)
            raise

    def _temp(self) -> tuple[int, str]:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix=f"compress-{os.getpid()}-", suffix=".tmp")
        os.fchmod(fd, 0o644)  # as every other blob of the layout (mkstemp makes 0600)
        return fd, tmp

    def _keep(self, m: Method, tmp: Path, got: Compressed) -> None:
        """The finished blob ``tmp`` into the layout, then its index entry (so an entry always has its blob)."""
        self.layout.add_blob_file(tmp, digest=got.digest)
        self.made += 1
        entry = {"version": self.VERSION, "method": m.describe(), "diff_id": got.diff_id, "digest": got.digest,
                 "size": got.size, "uncompressed_size": got.uncompressed_size, "media_type": m.media_type}
        atomic_write(self._entry_path(m, got.diff_id), json.dumps(entry, sort_keys=True, indent=1).encode() + b"\n")


class CompressingSink:
    """A layer compressed into the store while it is written: pass it to ``LayerPlan.write`` beside the layer's
    own file, then ``keep(diff_id)`` (the blob and its ``CompressedBlobs`` entry) or, on failure, ``discard()``.

    As a context manager it discards whatever was not kept, so a failed write leaves no temporary file.
    """

    def __init__(self, blobs: CompressedBlobs, m: Method, out: IO[bytes], tmp: Path, *, threads: int,
                 size: int | None) -> None:
        self.blobs, self.method, self._out, self._tmp = blobs, m, out, tmp
        self._compressor = Compressor(m, out, threads=threads, size=size)
        self.kept: Compressed | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self._compressor.write(data)

    def keep(self, diff_id: str) -> Compressed:
        """Finish the blob of the layer ``diff_id`` (the writer's digest of the bytes written) and index it."""
        try:
            got = self._compressor.close(diff_id)
            self._out.close()
            self.blobs._keep(self.method, self._tmp, got)
        finally:
            self.discard()
        self.kept = got
        return got

    def discard(self) -> None:
        self._compressor.abort()
        self._out.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> CompressingSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def compressed_descriptor(built: dict[str, Any], m: Method, c: Compressed) -> dict[str, Any]:
    """A built layer descriptor for its compressed blob: the method in the annotations, other keys kept."""
    return {**built, "mediaType": m.media_type, "digest": c.digest, "size": c.size,
            "annotations": {**built.get("annotations", {}), ANNOTATION: m.describe()}}


def built_descriptor(shipped: dict[str, Any], diff_id: str, size: int) -> dict[str, Any]:
    """The inverse of ``compressed_descriptor``: the descriptor the build wrote, from a shipped one."""
    out = {**shipped, "mediaType": LAYER_MEDIA_TYPE, "digest": diff_id, "size": size}
    annotations = {k: v for k, v in shipped.get("annotations", {}).items() if k != ANNOTATION}
    if annotations:
        out["annotations"] = annotations
    else:
        out.pop("annotations", None)
    return out


def _report(progress: Callable[[str, str], None], what: str) -> Callable[[int], None]:
    return lambda n: progress("compress", f"{what}: {n / 1e6:.0f} MB read")


@dataclass(frozen=True)
class ShippedImage:
    """A stored image as it leaves: the manifest to send (the stored one, or the same with compressed
    layer descriptors) and its blobs in the order to send them (config, then the layers bottom first)."""

    manifest_bytes: bytes
    manifest_digest: str
    built_manifest_digest: str
    blobs: tuple[tuple[str, int, Path], ...]  # (digest, size, file in the store)
    method: str  # Method.describe()
    compressed: int  # layers compressed now (0 when the index had them all)
    uncompressed_bytes: int  # of the layers


def compressed_image(blobs: CompressedBlobs, manifest_digest: str, m: Method, *, threads: int = 2,
                     progress: Callable[[str, str], None] = lambda stage, detail: None) -> ShippedImage:
    """The stored image ``manifest_digest`` with its layers compressed by ``m``.

    The config is the stored one (its diff_ids name the uncompressed layers, so docker's image ID after
    a pull is the built one); the manifest is the stored one with each layer descriptor replaced by
    ``{mediaType, digest, size, annotations: {io.buildsys.compression: METHOD}}`` of the compressed blob,
    in the one canonical serialization, and kept in the store's layout too. With ``none`` it is the
    stored manifest byte for byte.
    """
    layout = blobs.layout
    stored_bytes = layout.read_blob(manifest_digest)
    manifest: dict[str, Any] = json.loads(stored_bytes)
    config = manifest["config"]
    out: list[tuple[str, int, Path]] = [(config["digest"], int(config["size"]), layout.blob_path(config["digest"]))]
    made_before, total = blobs.made, 0
    descs = []
    for i, desc in enumerate(manifest["layers"], 1):
        diff_id, size = desc["digest"], int(desc["size"])
        total += size
        if m.format == "none":
            out.append((diff_id, size, layout.blob_path(diff_id)))
            continue
        what = f"layer {i}/{len(manifest['layers'])} {diff_id[:19]} ({size / 1e6:.1f} MB, {m.format})"
        found = blobs.lookup(m, diff_id)
        if found is None:
            progress("compress", what)
            found = blobs.get(m, diff_id, threads=threads, progress=_report(progress, what))
        out.append((found.digest, found.size, layout.blob_path(found.digest)))
        descs.append(compressed_descriptor(desc, m, found))
    if m.format == "none":
        data = stored_bytes
    else:
        data = canonical_bytes({**manifest, "layers": descs})
        layout.add_blob_bytes(data)
    return ShippedImage(data, digest_bytes(data), manifest_digest, tuple(out), m.describe(),
                        blobs.made - made_before, total)
