"""Build chains of layers into canonical images, with a content-keyed cache.

For each layer of a chain, in order: a cache hit (key: parent manifest
digest, recipe hash, lock hash, normalizer and builder versions) reuses the
stored image and starts nothing; a miss makes the layer (a Debian root is
bootstrapped offline; see ``bootstrap``), normalizes it, writes the canonical
image into the store's OCI layout and loads it into docker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from buildsys.build import baseimage, bootstrap, steps
from buildsys.core import dpkg
from buildsys.core.errors import BuildError, NotVendored, StaleLock
from buildsys.core.store import Store, atomic_write
from buildsys.fetch.vendor import verify_store
from buildsys.model.coverage import pip_closure
from buildsys.model.graph import Graph
from buildsys.model.lockfile import Lock, lock_path
from buildsys.model.recipe import Recipe, canonical_json
from buildsys.oci.image import (
    DamagedBlob,
    OciLayout,
    canonical_bytes,
    make_config,
    oci_labels,
    write_docker_archive,
    write_streamed_archive,
)
from buildsys.oci.layer import (
    NORMALIZER_VERSION,
    LayerPlan,
    ParentTree,
    normalize_tar,
    plan_layer,
    read_filesystem,
    read_upper_dir,
)

if TYPE_CHECKING:  # docker's client is imported only when an engine is used (a no-op build needs none)
    from buildsys.engine import Container, Engine, RunResult

# Bump when the way a layer is made changes (build steps, environment), so
# old cache entries stop matching. The normalizer has its own version.
BUILDER_VERSION = "2"

# The vendor store's mount point inside build containers; never part of a layer.
VENDOR_MOUNT = "buildsys"


@dataclass(frozen=True)
class LayerRecord:
    """One built image of a chain prefix: what the cache stores."""

    recipe: str
    config_digest: str
    manifest_digest: str
    diff_ids: tuple[str, ...]
    layers: tuple[tuple[str, int], ...]  # (blob digest, size) per layer, bottom first

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["diff_ids"] = list(self.diff_ids)
        d["layers"] = [list(x) for x in self.layers]
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LayerRecord:
        return cls(recipe=d["recipe"], config_digest=d["config_digest"], manifest_digest=d["manifest_digest"],
                   diff_ids=tuple(d["diff_ids"]), layers=tuple((x[0], int(x[1])) for x in d["layers"]))


@dataclass
class BuiltImage:
    recipe: str
    chain: list[str]
    layers: list[LayerRecord]  # one per chain prefix (an imported image: its own alone); the last is the image
    cached: bool  # True when every layer came from the cache
    seconds: float
    tag: str | None = None
    timings: dict[str, float] | None = None  # of the top layer, when it was built in this run

    @property
    def record(self) -> LayerRecord:
        return self.layers[-1]

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "image_id": self.record.config_digest,
            "manifest_digest": self.record.manifest_digest,
            "diff_ids": list(self.record.diff_ids),
            "chain": self.chain,
            "cached": self.cached,
            "tag": self.tag,
            "timings": {k: round(v, 3) for k, v in self.timings.items()} if self.timings is not None else None,
        }


# Progress events: (recipe, stage, detail). The CLI renders them.
Reporter = Callable[[str, str, str], None]


class LayerCache(Protocol):
    """A shared cache beyond this store, keyed like the local one (``remote_cache.RemoteCache``)."""

    def fetch(self, key: str, recipe: Recipe, parent: LayerRecord | None, layout: OciLayout) -> LayerRecord | None:
        """The layer of ``key`` with its blobs checked and placed in ``layout``, or None on a miss."""

    def offer(self, key: str, record: LayerRecord, layout: OciLayout) -> None:
        """Share ``record`` under ``key`` (a no-op for a read-only cache)."""


@dataclass
class Builder:
    store: Store
    graph: Graph
    locks: Mapping[str, Lock]
    engine: Engine | None = None
    no_cache: bool = False
    tag: bool = True  # tag chain images as RECIPE:latest (verify rebuilds do not)
    report: Reporter = lambda recipe, stage, detail: None
    # Connects to docker on first use, when ``engine`` is None: a build that the store
    # answers alone (all cached, already loaded and tagged) makes no engine round trip.
    connect: Callable[[], Engine] | None = None
    # Trust the store's note of what it loaded and tagged in this engine (``build``'s no-op);
    # ``test`` and ``run`` leave it off and ask the engine.
    trust_loaded: bool = False
    # A registry as a shared layer cache (``remote_cache.RemoteCache``): asked on a local miss,
    # given each layer of the chain it lacks. None: this machine only.
    remote: LayerCache | None = None
    _memo: dict[tuple[str, ...], tuple[LayerRecord, bool]] = field(default_factory=dict)
    # Seconds spent per built layer (by chain prefix): install, normalize, load.
    timings: dict[tuple[str, ...], dict[str, float]] = field(default_factory=dict)

    @property
    def layout(self) -> OciLayout:
        return OciLayout(self.store.oci)

    def build(self, names: Sequence[str], jobs: int = 1) -> list[BuiltImage]:
        try:
            return self._build(names, jobs)
        except DamagedBlob as e:
            # The blob is gone already; forget every cache entry that used it, then once more:
            # the layers it belonged to are rebuilt (the same digests, from the locks).
            dropped = self.forget_blob(e.digest)
            self.report("*", "repair", f"{e.message}; {dropped} cache entr{'y' if dropped == 1 else 'ies'} "
                                       "dropped, rebuilding")
            self._memo.clear()
            return self._build(names, jobs)

    def find(self, name: str) -> BuiltImage | None:
        """The image of ``name`` for the current locks when the store holds it; builds and loads nothing."""
        chain = self.graph.chain(name)
        records: list[LayerRecord] = []
        for recipe in chain:
            hit = self._cached(self.cache_key(self.graph.recipes[recipe], records[-1] if records else None))
            if hit is None:
                return self._imported(name, chain)
            records.append(hit)
        return BuiltImage(recipe=name, chain=chain, layers=records, cached=True, seconds=0.0)

    def _imported(self, name: str, chain: list[str]) -> BuiltImage | None:
        """The image ``buildsys import`` put in the store for ``name``, when it is the current locks' image.

        An import brings the image, not the cache entries of its chain (the other machine's
        intermediate images are not in the archive), so it is found by the store's ref NAME and
        accepted only when its config's labels name this recipe's hash and this lock's hash (the
        lock pins its parents' locks). Its ``layers`` then hold the image's own record alone.
        """
        from buildsys.oci.image import DamagedBlob

        digest = self.layout.resolve(name)
        lock = self.locks.get(name)
        if digest is None or lock is None:
            return None
        try:
            manifest, config = self.layout.read_image(digest)
            labels = config.get("config", {}).get("Labels") or {}
            if (labels.get("io.buildsys.recipe-hash") != self.graph.recipes[name].recipe_hash
                    or labels.get("io.buildsys.lock-hash") != lock.lock_hash):
                return None
            layers = tuple((str(d["digest"]), int(d["size"])) for d in manifest["layers"])
            record = LayerRecord(recipe=name, config_digest=str(manifest["config"]["digest"]),
                                 manifest_digest=digest, diff_ids=tuple(config["rootfs"]["diff_ids"]),
                                 layers=layers)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, DamagedBlob):
            return None
        if not all(self.layout.has_blob(d) for d, _ in layers):
            return None
        return BuiltImage(recipe=name, chain=chain, layers=[record], cached=True, seconds=0.0)

    def forget_blob(self, digest: str) -> int:
        """Remove the cache entries whose image uses ``digest``; return how many."""
        dropped = 0
        for path in sorted((self.store.cache / "layers").glob("*.json")):
            try:
                record = LayerRecord.from_json(json.loads(path.read_text()))
            except (ValueError, KeyError, OSError):
                path.unlink(missing_ok=True)  # unreadable: a miss anyway
                continue
            if digest in (record.config_digest, record.manifest_digest, *(d for d, _ in record.layers)):
                path.unlink(missing_ok=True)
                dropped += 1
        return dropped

    def _build(self, names: Sequence[str], jobs: int) -> list[BuiltImage]:
        selected = self.graph.select(names)
        if n := self.store.sweep_scratch():
            self.report("*", "cleanup", f"removed {n} scratch folder(s) left by an interrupted run")
        if self.engine is not None:
            self._sweep_containers(self.engine)
        if jobs > 1:
            self.prebuild([self.graph.chain(n) for n in selected], jobs)
        return [self.build_chain(n) for n in selected]

    def docker(self) -> Engine | None:
        """The engine, connected now if it was not yet (None: this builder works without one)."""
        if self.engine is None and self.connect is not None:
            self.engine = self.connect()
            self._sweep_containers(self.engine)
        return self.engine

    def _sweep_containers(self, engine: Engine) -> None:
        if n := engine.remove_stale_containers():
            self.report("*", "cleanup", f"removed {n} build container(s) left by an interrupted run")

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
                    self.report(prefix[-1], "timings", f"install {t['install']:.1f}s, normalize "
                                                       f"{t['normalize']:.1f}s, load {t['load']:.1f}s")
            parent, cached = self._memo[prefix]
            records.append(parent)
            all_cached &= cached
            # A prefix that is some recipe's own chain is that recipe's image: tag it.
            if self.tag and list(prefix) == self.graph.chain(prefix[-1]):
                self.load(parent, tag=prefix[-1])
        return records, all_cached

    # -- one layer -------------------------------------------------------------

    def cache_key(self, recipe: Recipe, parent: LayerRecord | None) -> str:
        lock = self.locks[recipe.name]
        key = {
            "parent": parent.manifest_digest if parent else None,
            "recipe": recipe.recipe_hash,
            "lock": lock.lock_hash,
            "normalizer": NORMALIZER_VERSION,
            "builder": BUILDER_VERSION,
        }
        return hashlib.sha256(canonical_json(key)).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.store.cache / "layers" / f"{key}.json"

    def _cached(self, key: str) -> LayerRecord | None:
        path = self._cache_path(key)
        if self.no_cache or not path.is_file():
            return None
        try:
            record = LayerRecord.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            return None  # a damaged entry is a miss
        layout = self.layout
        # An entry whose blobs were removed, or whose layer blobs changed size, is a miss, never
        # a half image. Same-size damage is caught where blob bytes are read (DamagedBlob).
        if not (layout.has_blob(record.config_digest) and layout.has_blob(record.manifest_digest)):
            return None
        for digest, size in record.layers:
            try:
                if layout.blob_path(digest).stat().st_size != size:
                    return None
            except FileNotFoundError:
                return None
        return record

    def stored_chain(self, name: str) -> list[LayerRecord] | None:
        """The records of ``name``'s chain as this store's cache has them for the current locks, or None.

        Starts nothing: what ``publish``, ``export`` and ``sbom`` read, never a build.
        """
        records: list[LayerRecord] = []
        parent: LayerRecord | None = None
        for recipe in (self.graph.recipes[n] for n in self.graph.chain(name)):
            parent = self._cached(self.cache_key(recipe, parent))
            if parent is None:
                return None
            records.append(parent)
        return records

    def _layer(self, recipe: Recipe, parent: LayerRecord | None, prefix: Sequence[str],
               ) -> tuple[LayerRecord, bool]:
        key = self.cache_key(recipe, parent)
        hit = self._cached(key)
        if hit is None and self.remote is not None and not self.no_cache:
            hit = self.remote.fetch(key, recipe, parent, self.layout)
            if hit is not None:
                atomic_write(self._cache_path(key), canonical_json(hit.to_json()))
                self.report(recipe.name, "remote cache", f"{hit.config_digest[:19]} from {self.remote}")
        if hit is not None:
            if self.remote is not None:
                self.remote.offer(key, hit, self.layout)
            self.report(recipe.name, "cached", hit.config_digest[:19])
            return hit, True
        started = time.monotonic()
        self._check_vendored(recipe, prefix)
        timings = self.timings[tuple(prefix)] = {"install": 0.0, "normalize": 0.0, "load": 0.0}
        if recipe.is_root:
            record = self._root_layer(recipe, timings)
        else:
            assert parent is not None
            record = self._child_layer(recipe, parent, prefix, timings)
        atomic_write(self._cache_path(key), canonical_json(record.to_json()))
        if self.remote is not None:
            self.remote.offer(key, record, self.layout)
        self.report(recipe.name, "built", f"{record.config_digest[:19]} in {time.monotonic() - started:.1f}s")
        return record, False

    def _image_root(self, recipe: Recipe, timings: dict[str, float]) -> LayerRecord:
        """A registry root: the image's vendored layers, unpacked and checked, under its canonical config."""
        lock = self.locks[recipe.name]
        base = lock.image_base
        assert base is not None
        t0 = time.monotonic()
        self.report(recipe.name, "unpack", f"{base.reference}: {len(base.layers)} layer(s) from the vendor store, "
                                           "no registry")
        upstream = baseimage.read_config(self.store, recipe.name, base)
        layers = baseimage.unpack_layers(self.store, self.layout, recipe.name, base, upstream)
        t1 = time.monotonic()
        os_name, _, arch = base.platform.partition("/")
        labels = oci_labels(recipe.name, recipe.recipe_hash, lock.lock_hash, recipe.description)
        config = make_config(parent=baseimage.canonical_base_config(upstream, lock.source_date_epoch), diff_id=None,
                             epoch=lock.source_date_epoch, image=recipe.image, labels=labels,
                             created_by=f"buildsys: {recipe.name} (on {base.reference})",
                             architecture=arch.split("/")[0], os=os_name)
        img = self.layout.write_image(config, layers)
        record = LayerRecord(recipe=recipe.name, config_digest=img.config_digest,
                             manifest_digest=img.manifest_digest, diff_ids=tuple(img.diff_ids),
                             layers=tuple(layers))
        t2 = time.monotonic()
        self.load(record)
        timings.update(install=t1 - t0, normalize=t2 - t1, load=time.monotonic() - t2)
        return record

    def _root_layer(self, recipe: Recipe, timings: dict[str, float]) -> LayerRecord:
        lock = self.locks[recipe.name]
        if lock.image_base is not None:
            return self._image_root(recipe, timings)
        assert lock.base is not None
        with self.store.scratch(f"build-{recipe.name}") as tmp:
            self.report(recipe.name, "bootstrap", f"mmdebstrap {lock.base.suite}/{lock.base.variant}, "
                                                  f"{len(lock.base.packages)} packages, no network")
            t0 = time.monotonic()
            result = bootstrap.bootstrap_debian(self.store, lock, recipe.run, Path(tmp))
            self._check_packages(recipe, [recipe.name], result.installed, "mmdebstrap")
            t1 = time.monotonic()
            self.report(recipe.name, "normalize", f"{result.tarball.stat().st_size / 1e6:.0f} MB rootfs")
            layer_tmp = Path(tmp) / "layer.tar"
            with open(result.tarball, "rb") as src, open(layer_tmp, "wb") as dst:
                info = normalize_tar(src, dst, lock.source_date_epoch)
            result.tarball.unlink()
            record = self._write_image(recipe, lock, None, layer_tmp, info.digest, info.size,
                                       created_by=f"buildsys: debootstrap {lock.base.suite} ({lock.base.variant})")
            t2 = time.monotonic()
            # Every root is needed by docker next (its child's build, or its own run): load it now.
            self.load(record)
            timings.update(install=t1 - t0, normalize=t2 - t1, load=time.monotonic() - t2)
            return record

    def _child_layer(self, recipe: Recipe, parent: LayerRecord, prefix: Sequence[str],
                     timings: dict[str, float]) -> LayerRecord:
        """Run the layer's steps in a container of the parent image, network none; take its diff.

        The diff is read from the overlay upper dir where this host can, else from
        commit + save; both are reduced to what changed against the parent chain's
        files (``layer.ParentTree``), so the engine's storage does not show.
        """
        lock = self.locks[recipe.name]
        created_by = f"buildsys: {recipe.name} ({_summary(recipe)})"
        t0 = time.monotonic()
        with self.run_steps(recipe, lock, parent) as (container, result, scratch):
            t1 = time.monotonic()
            self.report(recipe.name, "normalize", "the container's filesystem diff")
            below = ParentTree.from_layers((self.layout.blob_path(d) for d, _ in parent.layers),
                                           index_dir=self.store.cache / "index")
            t_read = time.monotonic()
            self._check_packages(recipe, prefix, steps.installed_packages(result.output), "apt", below)
            with contextlib.ExitStack() as stack:
                upper = container.upper_dir()
                if upper is not None:
                    layer = read_upper_dir(upper)
                else:
                    # Another storage driver or a remote engine: the whole filesystem, compared with the
                    # parent's. Slower (grows with the image), but commit + save is not enough: vfs's diff
                    # misses a file rewritten with the same size and mtime (useradd's etc/group- backup).
                    raw = stack.enter_context(tempfile.TemporaryFile(dir=self.store.tmp))
                    container.export(raw)
                    raw.seek(0)
                    layer = read_filesystem(raw, below)
                t_plan = time.monotonic()
                plan = plan_layer(layer, lock.source_date_epoch, (VENDOR_MOUNT,), below)
                t_write = time.monotonic()
                record, t2 = self._write_layer(recipe, lock, parent, plan, scratch / "layer.tar", created_by)
                self.report(recipe.name, "normalized",
                            f"{plan.entries} entries, {plan.size / 1e6:.0f} MB: parent chain {t_read - t1:.1f}s, "
                            f"{'upper dir' if upper is not None else 'export'} {t_plan - t_read:.1f}s, compare "
                            f"{t_write - t_plan:.1f}s, write+hash+stream {t2 - t_write:.1f}s")
        timings.update(install=t1 - t0, normalize=t2 - t1, load=time.monotonic() - t2)
        return record

    def _write_layer(self, recipe: Recipe, lock: Lock, parent: LayerRecord, plan: LayerPlan, layer_file: Path,
                     created_by: str) -> tuple[LayerRecord, float]:
        """Write the canonical layer to the store and, in the same pass, into ``docker load``.

        Return the record and when the layer's last byte was written: what docker
        does after that (apply the layer it received) is the load's own time.
        """
        done: dict[str, Any] = {}
        store_writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buildsys-store")

        def write_layer(into: Any = None) -> bytes:
            with open(layer_file, "wb") as f:
                info = plan.write(f, *(into,) if into is not None else ())
            done["at"] = time.monotonic()
            config = self._config(recipe, lock, parent, info.digest, created_by)
            # The store's copy is made durable (fsync, rename, config, manifest) while docker
            # applies the layer: docker needs only the config bytes, which are ready now.
            done["record"] = store_writes.submit(self._write_image, recipe, lock, parent, layer_file, info.digest,
                                                 info.size, created_by, config)
            return canonical_bytes(config)

        try:
            engine = self.docker()
            if engine is None:
                write_layer()
            else:
                self.report(recipe.name, "load", "docker load (new layer only), streamed as it is written")
                lower = list(parent.diff_ids)
                engine.load_stream(lambda sink: write_streamed_archive(sink, lower, plan.size, write_layer))
            record: LayerRecord = done["record"].result()
        finally:
            store_writes.shutdown(wait=True)
        return record, done["at"]

    @contextlib.contextmanager
    def run_steps(self, recipe: Recipe, lock: Lock, parent: LayerRecord,
                  ) -> Iterator[tuple[Container, RunResult, Path]]:
        """Stage the layer's inputs and run its build script in a container of the parent, network none.

        Yields the stopped container (to read its diff, or commit it), the run's
        result and a scratch folder; a failed step raises, naming the step.
        """
        engine = self.docker()
        assert engine is not None, "building a layer needs the docker engine"
        self.load(parent, tag=None)
        with self.store.scratch(f"build-{recipe.name}") as tmp:
            staged = steps.stage_layer(self.store, recipe, lock, Path(tmp) / "stage")
            with engine.container(parent.config_digest, staged.command, env=staged.env, network="none",
                                       mounts=[(str(staged.folder), steps.MOUNT, True)],
                                       hostname=bootstrap.BUILD_HOSTNAME, user="0:0", workdir="/") as container:
                self.report(recipe.name, "run", f"container on {parent.config_digest[:19]}, network none")
                result = container.run(on_output=lambda line: self._on_build_output(recipe.name, line))
                if result.exit_code != 0:
                    step = steps.failed_step(result.output)
                    hint = (bootstrap.NO_NETWORK_HINT if bootstrap.tried_network(result.output) else
                            steps.failure_hint(result.output) or
                            f"fix the step in {recipe.path}, then run `buildsys build {recipe.name}` again")
                    raise BuildError(recipe.name, f"{step} (exit {result.exit_code})", result.output, hint=hint)
                yield container, result, Path(tmp)

    def _on_build_output(self, recipe: str, line: str) -> None:
        if line.startswith(steps.STEP_MARKER):
            self.report(recipe, "step", line.removeprefix(steps.STEP_MARKER))

    def _check_packages(self, recipe: Recipe, prefix: Sequence[str], installed: Mapping[str, str] | None,
                        step: str, below: ParentTree | None = None) -> None:
        """dpkg must hold exactly the locked packages of the chain so far: the locks are the bill of materials.

        On a registry image, what the image itself installed is in no lock: it is read
        from the parent image's own dpkg status (``below``), and the locks add to it.
        """
        if installed is None:
            return
        expected: dict[str, str] = {}
        if self.locks[prefix[0]].image_base is not None and below is not None:
            expected.update(dpkg.installed(below.read("var/lib/dpkg/status") or b""))
        for name in prefix:
            lk = self.locks[name]
            expected.update({d.name: d.version for d in (*(lk.base.packages if lk.base else ()), *lk.apt)})
        if installed != expected:
            extra = sorted(set(installed) - set(expected))
            missing = sorted(set(expected) - set(installed))
            changed = sorted(n for n in set(installed) & set(expected) if installed[n] != expected[n])
            raise BuildError(recipe.name, step, f"installed but not locked: {extra or '-'}; locked but not "
                             f"installed: {missing or '-'}; other version: {changed or '-'}",
                             hint=f"relock: `buildsys lock --upgrade {recipe.name}`; if it persists, "
                                  "this is a buildsys bug")

    def _check_vendored(self, recipe: Recipe, prefix: Sequence[str]) -> None:
        """Every input of the layer is in the vendor store with its locked sha256, and the pip set is closed.

        A damaged file is removed (so ``fetch`` replaces it) and named; this costs
        one hash pass over the layer's inputs, and only on a cache miss. The
        closure is read from the wheels themselves (``lockcheck.pip_closure``):
        pip installs with ``--no-deps`` and would not notice a missing one.
        """
        arts = self.locks[recipe.name].artifacts()
        missing = [a for a in arts if not self.store.vendor_path(a.sha256).is_file()]
        if missing:
            names = ", ".join(f"{a.name} {a.version}".strip() for a in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise NotVendored(recipe.name, f"{len(missing)} locked file(s) ({names}{more})")
        corrupt = verify_store(self.store, arts, remove=True)
        if corrupt:
            a = corrupt[0]
            raise NotVendored(recipe.name, f"{a.name} {a.version} ({a.filename})".replace("  ", " "),
                              f"damaged in the vendor store (its sha256 is not the locked {a.sha256}); "
                              f"{len(corrupt)} damaged file(s) were removed")
        lock = self.locks[recipe.name]
        if lock.pip and (unmet := pip_closure(self.store, [self.locks[n] for n in prefix], lock)):
            more = f" (and {len(unmet) - 3} more)" if len(unmet) > 3 else ""
            raise StaleLock(recipe.name, lock_path(recipe.path.parent.parent, recipe.name),
                            "its pip set is not closed: " + "; ".join(unmet[:3]) + more)

    def _config(self, recipe: Recipe, lock: Lock, parent: LayerRecord | None, diff_id: str,
                created_by: str) -> dict[str, Any]:
        parent_config = self.layout.read_config(parent.config_digest) if parent else None
        labels = oci_labels(recipe.name, recipe.recipe_hash, lock.lock_hash, recipe.description)
        return make_config(parent=parent_config, diff_id=diff_id, epoch=lock.source_date_epoch,
                           image=recipe.image, labels=labels, created_by=created_by)

    def _write_image(self, recipe: Recipe, lock: Lock, parent: LayerRecord | None, layer_file: Path,
                     diff_id: str, size: int, created_by: str, config: dict[str, Any] | None = None) -> LayerRecord:
        layout = self.layout
        digest = layout.add_blob_file(layer_file, digest=diff_id)
        if config is None:
            config = self._config(recipe, lock, parent, diff_id, created_by)
        layers = [*(parent.layers if parent else ()), (digest, size)]
        img = layout.write_image(config, layers)
        return LayerRecord(recipe=recipe.name, config_digest=img.config_digest,
                           manifest_digest=img.manifest_digest, diff_ids=tuple(img.diff_ids),
                           layers=tuple((d, s) for d, s in layers))

    # -- docker ---------------------------------------------------------------

    def load(self, record: LayerRecord, tag: str | None = None) -> None:
        """Make sure docker has the image (loading it from the store), and tag it."""
        if tag and self.trust_loaded and self.engine is None and self._noted(tag) == record.config_digest:
            # Loaded and tagged by an earlier build into this engine. Ask it cheaply whether that
            # still holds (an image pruned or a tag moved by hand); when it cannot be asked this
            # way (a remote engine, the socket away), the note is taken at its word.
            from buildsys.engine.probe import tagged_image

            if tagged_image(f"{tag}:latest") in (record.config_digest, None):
                return
        engine = self.docker()
        if engine is None:
            return
        from buildsys.engine import EngineError

        if not engine.has_image(record.config_digest):
            # When docker has the parent image, send only the new layer: the load then
            # costs what the layer holds, not the whole image (measured: 0.94 s of a
            # 1.34 s incremental build went to re-sending the lower layers).
            parent = next((r for r, _ in self._memo.values() if r.layers == record.layers[:-1]), None)
            omit = len(record.layers) - 1 if parent and engine.has_image(parent.config_digest) else 0
            self.report(record.recipe, "load", "docker load" + (" (new layer only)" if omit else ""))
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
                self.report(record.recipe, "warning", f"{tag}:latest pointed at {previous[:19]}, which this store "
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
        with tempfile.TemporaryFile(dir=self.store.tmp) as archive:
            write_docker_archive(self.layout, record.manifest_digest, [], archive, omit_layers=omit_layers)
            archive.seek(0)
            engine.load(archive)


def engine_notes() -> Path:
    """Where builds note what they tagged in the engine at DOCKER_HOST: per machine user, not per store,
    so that a tag moved by another project's build is seen (and moved back) without asking docker."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    where = hashlib.sha256(os.environ.get("DOCKER_HOST", "default").encode()).hexdigest()[:16]
    return state / "buildsys" / "engines" / where


def _summary(recipe: Recipe) -> str:
    parts = []
    if recipe.apt_packages:
        parts.append(f"apt {len(recipe.apt_packages)}")
    if recipe.pip_packages:
        parts.append(f"pip {len(recipe.pip_packages)}")
    if recipe.cran_packages:
        parts.append(f"cran {len(recipe.cran_packages)}")
    if recipe.files:
        parts.append(f"files {len(recipe.files)}")
    if recipe.run:
        parts.append(f"run {len(recipe.run)}")
    return ", ".join(parts) or "config only"
