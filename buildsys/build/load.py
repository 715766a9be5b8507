"""Docker's side of a build: the engine, connected on first use; images loaded from the store and tagged.

A build that the store answers alone (all cached, already loaded and tagged)
makes no engine round trip and does not import the docker SDK: what it loaded
and tagged is noted per engine (``engine_notes``) and checked with one cheap
question (``engine.probe``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from buildsys.build.records import LayerRecord
from buildsys.core.progress import Progress
from buildsys.core.store import Store, atomic_write
from buildsys.engine import EngineError
from buildsys.engine.probe import tagged_image
from buildsys.oci.image import OciLayout, write_docker_archive

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
