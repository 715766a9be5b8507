"""Build chains of layers into canonical images, with a content-keyed cache.

For each layer of a chain, in order: a cache hit (``cache``) reuses the stored
image and starts nothing; a miss makes the layer (``layers``: a Debian root is
bootstrapped offline, a registry root unpacked, a child layer run in a
container), after checking its inputs (``checks``), writes the canonical image
into the store's OCI layout and loads it into docker (``load``). This module
schedules: which layers, in which order, independent branches in parallel.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

from buildsys.build.cache import Cache, LayerCache, cache_key, layer_key
from buildsys.build.checks import check_vendored
from buildsys.build.layers import LayerMaker
from buildsys.build.load import Loader
from buildsys.build.records import BuiltImage, LayerRecord
from buildsys.core import vcs
from buildsys.core.errors import EngineUnavailable
from buildsys.core.progress import NO_PROGRESS, Progress
from buildsys.core.store import Store
from buildsys.ecosystems.registry_image import ImageBaseLock
from buildsys.model.graph import Graph
from buildsys.model.lockfile import Lock, lock_path
from buildsys.model.recipe import Recipe
from buildsys.oci.compress import Method
from buildsys.oci.image import DamagedBlob, ImageMeta, OciLayout

if TYPE_CHECKING:  # docker's client is imported only when an engine is used (a no-op build needs none)
    from buildsys.engine import Container, Engine, RunResult


class Builder:
    """Builds chains for one store and one set of locks; what it built or found is kept for the run (``_memo``)."""

    def __init__(
        self,
        store: Store,
        graph: Graph,
        locks: Mapping[str, Lock],
        engine: Engine | None = None,
        no_cache: bool = False,
        tag: bool = True,  # tag chain images as RECIPE:latest (verify rebuilds do not)
        progress: Progress = NO_PROGRESS,
        # Connects to docker on first use, when ``engine`` is None: a build that the store
        # answers alone (all cached, already loaded and tagged) makes no engine round trip.
        connect: Callable[[], Engine] | None = None,
        # Trust the store's note of what it loaded and tagged in this engine (``build``'s no-op);
        # ``test`` and ``run`` leave it off and ask the engine.
        trust_loaded: bool = False,
        # A registry as a shared layer cache (``remote_cache.RemoteCache``): asked on a local miss,
        # given each layer of the chain it lacks. None: this machine only.
        remote: LayerCache | None = None,
        # Load into docker the images no later step of this build runs (each named chain's own image)?
        # False: they stay in the store until ``run``/``test`` ask (``build --no-load``, verify's rebuild).
        load_leaves: bool = True,
        # Compress each layer made here while it is written (``LayerMaker.compress``): for a build whose
        # images leave (publish, --cache-to, --verify's comparison). None: only when they leave.
        compress: Method | None = None,
    ) -> None:
        self.store, self.graph, self.locks = store, graph, locks
        self.no_cache, self.tag, self.progress, self.remote = no_cache, tag, progress, remote
        self.load_leaves = load_leaves
        self._runs_on: set[tuple[str, ...]] = set()  # the chain prefixes a layer of this build is built on
        self.cache = Cache(store, no_cache)
        self._memo: dict[tuple[str, ...], tuple[LayerRecord, bool]] = {}
        self.loader = Loader(store, progress, engine, connect, trust_loaded,
                             known=lambda: (r for r, _ in self._memo.values()))
        self.maker = LayerMaker(store, locks, self.loader, progress, self.meta, compress)
        self._meta: dict[str, ImageMeta] = {}
        # Seconds spent per built layer (by chain prefix): install, normalize, load.
        self.timings: dict[tuple[str, ...], dict[str, float]] = {}

    @property
    def layout(self) -> OciLayout:
        return OciLayout(self.store.oci)

    @property
    def engine(self) -> Engine | None:
        return self.loader.engine

    def build(self, names: Sequence[str], jobs: int = 1) -> list[BuiltImage]:
        try:
            return self._build(names, jobs)
        except DamagedBlob as e:
            # The blob is gone already; forget every cache entry that used it, then once more:
            # the layers it belonged to are rebuilt (the same digests, from the locks).
            dropped = self.forget_blob(e.digest)
            self.progress("*", "repair", f"{e.message}; {dropped} cache entr{'y' if dropped == 1 else 'ies'} "
                                       "dropped, rebuilding")
            self._memo.clear()
            return self._build(names, jobs)

    def find(self, name: str) -> BuiltImage | None:
        """The image of ``name`` for the current locks when the store holds it; builds and loads nothing."""
        chain = self.graph.chain(name)
        records: list[LayerRecord] = []
        for recipe in chain:
            hit = self.cache.get(self.cache_key(self.graph.recipes[recipe], records[-1] if records else None))
            if hit is None:
                imported = self.cache.imported(self.graph.recipes[name], self.locks.get(name))
                if imported is None:
                    return None
                return BuiltImage(recipe=name, chain=chain, layers=[imported], cached=True, seconds=0.0)
            records.append(hit)
        return BuiltImage(recipe=name, chain=chain, layers=records, cached=True, seconds=0.0)

    def stored_chain(self, name: str) -> list[LayerRecord] | None:
        """The records of ``name``'s chain as this store's cache has them for the current locks, or None.

        Starts nothing: what ``publish``, ``export`` and ``sbom`` read, never a build.
        """
        records: list[LayerRecord] = []
        parent: LayerRecord | None = None
        for recipe in (self.graph.recipes[n] for n in self.graph.chain(name)):
            parent = self.cache.get(self.cache_key(recipe, parent))
            if parent is None:
                return None
            records.append(parent)
        return records

    def cache_key(self, recipe: Recipe, parent: LayerRecord | None) -> str:
        return cache_key(recipe, self.locks[recipe.name], parent, self.meta(recipe.name))

    def meta(self, name: str) -> ImageMeta:
        """What ``name``'s labels say beyond its recipe and lock: the commit that last changed the chain's
        recipes and locks with the repository's URL (``core/vcs.py``), and the registry image it starts from."""
        if name not in self._meta:
            chain = [self.graph.recipes[n] for n in self.graph.chain(name)]
            paths = [p for r in chain for p in (r.path, lock_path(r.path.parent.parent, r.name))]
            rev = vcs.revision(paths)
            base = self.locks[chain[0].name].get(ImageBaseLock)
            self._meta[name] = ImageMeta(revision=rev.commit if rev else None, source=rev.source if rev else None,
                                         base_name=base.reference.partition("@")[0] if base else None,
                                         base_digest=base.manifest_digest if base else None)
        return self._meta[name]

    def forget_blob(self, digest: str) -> int:
        """Remove the cache entries whose image uses ``digest``; return how many."""
        return self.cache.forget_blob(digest)

    def _build(self, names: Sequence[str], jobs: int) -> list[BuiltImage]:
        selected = self.graph.select(names)
        self._runs_on = {tuple(c[:i]) for c in map(self.graph.chain, selected) for i in range(1, len(c))}
        self._sweep_litter()
        if jobs > 1:
            self.prebuild([self.graph.chain(n) for n in selected], jobs)
        return [self.build_chain(n) for n in selected]

    def _sweep_litter(self) -> None:
        """Remove what killed builds left: their build containers first, then their scratch folders.

        A build container runs with a folder of its build's scratch mounted, so a killed
        build always leaves a scratch folder with its container (issue 25: a cached build
        removed the folder and left the container running). The engine is asked only then,
        or when this builder holds one already: a no-op build finds no such folder and
        connects to nothing.
        """
        stale = self.store.stale_scratch()
        if self.engine is not None:
            self.loader.sweep_containers(self.engine)
        elif stale:
            with contextlib.suppress(EngineUnavailable):  # no engine, no container to remove
                self.docker()  # connecting sweeps
        if stale and (n := self.store.sweep_scratch()):
            self.progress("*", "cleanup", f"removed {n} scratch folder(s) left by an interrupted run")

    def docker(self) -> Engine | None:
        """The engine, connected now if it was not yet (None: this builder works without one)."""
        return self.loader.docker()

    def load(self, record: LayerRecord, tag: str | None = None) -> None:
        """Make sure docker has the image (loading it from the store), and tag it."""
        self.loader.load(record, tag)

    def run_steps(self, recipe: Recipe, lock: Lock, parent: LayerRecord,
                  ) -> contextlib.AbstractContextManager[tuple[Container, RunResult, Path]]:
        """Run the layer's build script in a container of the parent (``LayerMaker.run_steps``)."""
        return self.maker.run_steps(recipe, lock, parent)

    def prebuild(self, chains: Sequence[Sequence[str]], jobs: int) -> None:
        """Build every layer of ``chains``, independent branches in parallel.

        A layer waits only for the layer below it in its chain; the results land
        in the memo, so the ordinary (sequential) pass that follows only tags.
        """
        prefixes = {tuple(c[: i + 1]) for c in chains for i in range(len(c))}
        pending = sorted(prefixes, key=lambda p: (len(p), p))
        done: set[tuple[str, ...]] = {p for p in pending if p in self._memo}
        pending = [p for p in pending if p not in done]
        running: dict[Future[tuple[LayerRecord, bool]], tuple[str, ...]] = {}
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="layer") as pool:
            try:
                while pending or running:
                    for p in [p for p in pending if len(p) == 1 or p[:-1] in done]:
                        pending.remove(p)
                        parent = self._memo[p[:-1]][0] if len(p) > 1 else None
                        running[pool.submit(self._layer, self.graph.recipes[p[-1]], parent, p)] = p
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for f in finished:
                        p = running.pop(f)
                        self._memo[p] = f.result()  # the first failure stops the build
                        done.add(p)
            except BaseException:
                for f in running:
                    f.cancel()
                raise

    def build_chain(self, name: str) -> BuiltImage:
        started = time.monotonic()
        chain = self.graph.chain(name)
        records, all_cached = self.build_prefix(chain)
        tag = f"{name}:latest" if self.tag else None
        return BuiltImage(recipe=name, chain=chain, layers=records, cached=all_cached,
                          seconds=time.monotonic() - started, tag=tag, timings=self.timings.get(tuple(chain)))

    def build_prefix(self, chain: Sequence[str]) -> tuple[list[LayerRecord], bool]:
        """Build the layers ``chain`` lists, in order, each on the one before."""
        records: list[LayerRecord] = []
        all_cached = True
        parent: LayerRecord | None = None
        for i in range(len(chain)):
            prefix = tuple(chain[: i + 1])
            if prefix not in self._memo:
                self._memo[prefix] = self._layer(self.graph.recipes[prefix[-1]], parent, prefix)
                if prefix in self.timings and not self._memo[prefix][1]:
                    t = self.timings[prefix]
                    self.progress(prefix[-1], "timings", f"install {t['install']:.1f}s, normalize "
                                                       f"{t['normalize']:.1f}s, load {t['load']:.1f}s"
                                  + (f", cleanup {t['cleanup']:.1f}s" if "cleanup" in t else ""))
            parent, cached = self._memo[prefix]
            records.append(parent)
            all_cached &= cached
            # A prefix that is some recipe's own chain is that recipe's image: tag it.
            if self.tag and list(prefix) == self.graph.chain(prefix[-1]):
                self.load(parent, tag=prefix[-1])
        return records, all_cached

    def _layer(self, recipe: Recipe, parent: LayerRecord | None, prefix: Sequence[str],
               ) -> tuple[LayerRecord, bool]:
        """One layer: from this store's cache, else the shared one, else made now."""
        key = self.cache_key(recipe, parent)
        hit = self.cache.get(key)
        if hit is None and self.remote is not None and not self.no_cache:
            hit = self.remote.fetch(key, recipe, parent, self.layout)
            if hit is not None:
                self.cache.put(key, hit)
                self.progress(recipe.name, "remote cache", f"{hit.config_digest[:19]} from {self.remote}")
        if hit is not None:
            if self.remote is not None:
                self.remote.offer(key, hit, self.layout)
            self.progress(recipe.name, "cached", hit.config_digest[:19])
            return hit, True
        files_key = layer_key(recipe, self.locks[recipe.name], parent)
        same_files = self.cache.get(files_key)
        if same_files is not None:
            record = self.maker.relabel(recipe, same_files, parent)
            self.cache.put(key, record)
            if self.remote is not None:
                self.remote.offer(key, record, self.layout)
            self.progress(recipe.name, "relabeled", f"{record.config_digest[:19]}: the layer made before, under "
                                                    "today's labels (revision, source)")
            return record, True
        started = time.monotonic()
        check_vendored(self.store, self.locks, recipe, prefix)
        timings = self.timings[tuple(prefix)] = {"install": 0.0, "normalize": 0.0, "load": 0.0}
        load = self.load_leaves or tuple(prefix) in self._runs_on
        if recipe.is_root:
            record = self.maker.root(recipe, timings, load=load)
        else:
            assert parent is not None
            record = self.maker.child(recipe, parent, prefix, timings, load=load)
        self.cache.put(key, record)
        self.cache.put(files_key, record)
        if self.remote is not None:
            self.remote.offer(key, record, self.layout)
        self.progress(recipe.name, "built", f"{record.config_digest[:19]} in {time.monotonic() - started:.1f}s")
        return record, False
