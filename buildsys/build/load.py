"""Docker's side of a build: the engine, connected on first use; images loaded from the store and tagged.

A build that the store answers alone (all cached, already loaded and tagged)
makes no engine round trip and does not import the docker SDK: what it loaded
and tagged is noted per engine (``engine_notes``) and checked with one cheap
question (``engine.probe``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from buildsys.build.records import LayerRecord
from buildsys.core.progress import Progress
from buildsys.core.store import Store, atomic_write
from buildsys.engine import EngineError
from buildsys.engine.probe import tagged_image
from buildsys.oci.image import (
    OciLayout,
    interim_config,
    write_docker_archive,
    write_streamed_archive,
)

if TYPE_CHECKING:
    from buildsys.engine import Engine


def engine_notes() -> Path:
    """Where builds note what they tagged in the engine at DOCKER_HOST: per machine user, not per store,
    so that a tag moved by another project's build is seen (and moved back) without asking docker."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    where = hashlib.sha256(os.environ.get("DOCKER_HOST", "default").encode()).hexdigest()[:16]
    return state / "buildsys" / "engines" / where


@dataclass
class Loader:
    """The engine of one build, and what goes into it from the store."""

    store: Store
    progress: Progress
    engine: Engine | None = None
    # Connects to docker on first use, when ``engine`` is None.
    connect: Callable[[], Engine] | None = None
    # Trust the store's note of what it loaded and tagged in this engine (``build``'s no-op);
    # ``test`` and ``run`` leave it off and ask the engine.
    trust_loaded: bool = False
    # The records this build has at hand: a loaded one among them lets a load send only the new layer.
    known: Callable[[], Iterable[LayerRecord]] = lambda: ()

    @property
    def layout(self) -> OciLayout:
        return OciLayout(self.store.oci)

    def docker(self) -> Engine | None:
        """The engine, connected now if it was not yet (None: this builder works without one)."""
        if self.engine is None and self.connect is not None:
            self.engine = self.connect()
            self.sweep_containers(self.engine)
        return self.engine

    def sweep_containers(self, engine: Engine) -> None:
        if n := engine.remove_stale_containers():
            self.progress("*", "cleanup", f"removed {n} build container(s) left by an interrupted run")

    def load(self, record: LayerRecord, tag: str | None = None) -> None:
        """Make sure docker has the image (loading it from the store), and tag it."""
        # Loaded and tagged by an earlier build into this engine? Ask it cheaply whether that
        # still holds (an image pruned or a tag moved by hand); when it cannot be asked this
        # way (a remote engine, the socket away), the note is taken at its word.
        if (tag and self.trust_loaded and self.engine is None and self._noted(tag) == record.config_digest
                and tagged_image(f"{tag}:latest") in (record.config_digest, None)):
            return
        engine = self.docker()
        if engine is None:
            return
        if not engine.has_image(record.config_digest):
            # When docker has the parent image, send only the new layer: the load then
            # costs what the layer holds, not the whole image (measured: 0.94 s of a
            # 1.34 s incremental build went to re-sending the lower layers).
            # The parent: the longest image at hand whose layers start this one's (a split layer adds several).
            below = [r for r in self.known()
                     if len(r.layers) < len(record.layers) and r.layers == record.layers[:len(r.layers)]]
            parent = max(below, key=lambda r: len(r.layers), default=None)
            omit = len(parent.layers) if parent and engine.has_image(parent.config_digest) else 0
            self.progress(record.recipe, "load", "docker load" + (" (new layers only)" if omit else ""))
            try:
                self._docker_load(record, omit)
            except EngineError:
                if not omit:
                    raise
                self._docker_load(record, 0)  # an engine that wants every layer after all
        if tag:
            previous = engine.tag(record.config_digest, tag, "latest")
            # Tags are per engine, recipes per project: say when a tag moves away from an
            # image that this store did not build (another project's recipe of the same name).
            if previous and previous != record.config_digest and not self.layout.has_blob(previous):
                self.progress(record.recipe, "warning", f"{tag}:latest pointed at {previous[:19]}, which this store "
                                                      f"did not build (another project?); it now points at "
                                                      f"{record.config_digest[:19]}")
            self.layout.set_ref(tag, record.manifest_digest)
            atomic_write(self._note_path(tag), record.config_digest.encode())

    def _note_path(self, tag: str) -> Path:
        return engine_notes() / f"{tag}.tag"

    def _noted(self, tag: str) -> str | None:
        try:
            return self._note_path(tag).read_text()
        except OSError:
            return None

    def _docker_load(self, record: LayerRecord, omit_layers: int) -> None:
        engine = self.docker()
        assert engine is not None
        # Streamed as it is read from the store: a temporary archive would write every layer once more
        # and read it twice more (a registry root of several GB: its whole size, twice).
        engine.load_stream(lambda sink: write_docker_archive(self.layout, record.manifest_digest, [], sink,
                                                             omit_layers=omit_layers))


def each_layer() -> bool:
    """Whether a build sends a recipe's new layers one load per layer (the default) or in one archive
    (``BUILDSYS_LOAD_EACH_LAYER=0``: the peer ``bench/bench_gpu.py`` measures against)."""
    return os.environ.get("BUILDSYS_LOAD_EACH_LAYER", "1") != "0"


def load_each_layer(engine: Engine, lower: Sequence[str], sizes: Sequence[int],
                    write: Callable[[int, IO[bytes]], str], final: Callable[[], bytes],
                    platform: dict[str, Any] | None) -> None:
    """``docker load`` of layers on ``lower`` (diff_ids docker has), one load per layer, each streamed as
    ``write(i, sink)`` writes it (exactly ``sizes[i]`` bytes; it returns the layer's diff_id).

    docker 20.10 copies an upload whole to disk before it unpacks any of it: in one
    archive, every layer waits for the last byte, and GBs of upload pass through its
    temporary folder at the disk's pace. One load per layer lets docker unpack layer i
    while layer i + 1 is sent. Each load's config goes last, once docker has the layer
    below (a load names its lower layers without sending them): an interim image of
    the layers so far (``image.interim_config``, on ``platform``'s os and
    architecture), removed at the end, then the image's own config, ``final()``,
    called after the last layer is written (before that wait: a refusal below still
    finds the caller's record made). The first error is raised: a write's, or docker's.
    One layer, or ``each_layer()`` off: one archive, as before (the bench's peer).
    """
    n = len(sizes)
    digests: list[str] = []
    interim: list[str] = []
    loads: list[Future[None]] = []
    if n == 1 or not each_layer():  # one archive: docker unpacks every layer after the last byte
        def whole(i: int, sink: IO[bytes]) -> bytes | None:
            digests.append(write(i, sink))
            return final() if i == n - 1 else None

        engine.load_stream(lambda sink: write_streamed_archive(sink, lower, sizes, whole))
        return

    def archive(i: int, previous: Future[None] | None, written: threading.Event) -> Callable[[IO[bytes]], None]:
        def layer(_: int, sink: IO[bytes]) -> bytes:
            try:
                digests.append(write(i, sink))
            finally:
                written.set()
            if i == n - 1:
                config = final()
            else:
                config = interim_config(platform, [*lower, *digests])
                interim.append("sha256:" + hashlib.sha256(config).hexdigest())
            if previous is not None:
                previous.result()  # docker has the layer below, or its refusal is this load's too
            return config

        below = [*lower, *digests]
        return lambda sink: write_streamed_archive(sink, below, [sizes[i]], layer)

    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="buildsys-load-each") as pool:
        for i in range(n):
            written = threading.Event()
            loads.append(pool.submit(engine.load_stream, archive(i, loads[-1] if loads else None, written)))
            while not written.wait(0.2) and not loads[-1].done():
                pass
            if len(digests) <= i:  # its write failed (or docker stopped reading): nothing above it
                break
    failed = next((e for f in loads if (e := f.exception()) is not None), None)
    for image in interim:  # vehicles only: the image loaded last holds their layers
        with contextlib.suppress(EngineError):
            engine.remove_image(image)
    if failed is not None:
        raise failed
