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
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from buildsys import bootstrap, steps
from buildsys.engine import Container, Engine, EngineError, RunResult
from buildsys.errors import BuildError, NotVendored, StaleLock
from buildsys.graph import Graph
from buildsys.image import DamagedBlob, OciLayout, make_config, oci_labels, write_docker_archive
from buildsys.layer import NORMALIZER_VERSION, normalize_dir, normalize_tar
from buildsys.lockcheck import pip_closure
from buildsys.lockfile import Lock, lock_path
from buildsys.recipe import Recipe, canonical_json
from buildsys.store import Store, atomic_write
from buildsys.vendor import verify_store

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
    layers: list[LayerRecord]  # one per chain prefix; the last is the image itself
    cached: bool  # True when every layer came from the cache
    seconds: float
    tag: str | None = None

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
        }


# Progress events: (recipe, stage, detail). The CLI renders them.
Reporter = Callable[[str, str, str], None]


@dataclass
class Builder:
    store: Store
    graph: Graph
    locks: Mapping[str, Lock]
    engine: Engine | None = None
    no_cache: bool = False
    tag: bool = True  # tag chain images as RECIPE:latest (verify rebuilds do not)
    report: Reporter = lambda recipe, stage, detail: None
    _memo: dict[tuple[str, ...], tuple[LayerRecord, bool]] = field(default_factory=dict)

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
                return None
            records.append(hit)
        return BuiltImage(recipe=name, chain=chain, layers=records, cached=True, seconds=0.0)

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
        if self.engine is not None and (n := self.engine.remove_stale_containers()):
            self.report("*", "cleanup", f"removed {n} build container(s) left by an interrupted run")
        if jobs > 1:
            self.prebuild([self.graph.chain(n) for n in selected], jobs)
        return [self.build_chain(n) for n in selected]

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
                          seconds=time.monotonic() - started, tag=tag)

    def build_prefix(self, chain: Sequence[str]) -> tuple[list[LayerRecord], bool]:
        """Build the layers ``chain`` lists, in order, each on the one before."""
        records: list[LayerRecord] = []
        all_cached = True
        parent: LayerRecord | None = None
        for i in range(len(chain)):
            prefix = tuple(chain[: i + 1])
            if prefix not in self._memo:
                self._memo[prefix] = self._layer(self.graph.recipes[prefix[-1]], parent, prefix)
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

    def _layer(self, recipe: Recipe, parent: LayerRecord | None, prefix: Sequence[str],
               ) -> tuple[LayerRecord, bool]:
        key = self.cache_key(recipe, parent)
        hit = self._cached(key)
        if hit is not None:
            self.report(recipe.name, "cached", hit.config_digest[:19])
            return hit, True
        started = time.monotonic()
        self._check_vendored(recipe, prefix)
        if recipe.is_root:
            record = self._root_layer(recipe)
        else:
            assert parent is not None
            record = self._child_layer(recipe, parent, prefix)
        atomic_write(self._cache_path(key), canonical_json(record.to_json()))
        self.report(recipe.name, "built", f"{record.config_digest[:19]} in {time.monotonic() - started:.1f}s")
        return record, False

    def _root_layer(self, recipe: Recipe) -> LayerRecord:
        lock = self.locks[recipe.name]
        assert lock.base is not None
        with self.store.scratch(f"build-{recipe.name}") as tmp:
            self.report(recipe.name, "bootstrap", f"mmdebstrap {lock.base.suite}/{lock.base.variant}, "
                                                  f"{len(lock.base.packages)} packages, no network")
            result = bootstrap.bootstrap_debian(self.store, lock, recipe.run, Path(tmp))
            self._check_packages(recipe, [recipe.name], result.installed, "mmdebstrap")
            self.report(recipe.name, "normalize", f"{result.tarball.stat().st_size / 1e6:.0f} MB rootfs")
            layer_tmp = Path(tmp) / "layer.tar"
            with open(result.tarball, "rb") as src, open(layer_tmp, "wb") as dst:
                info = normalize_tar(src, dst, lock.source_date_epoch)
            result.tarball.unlink()
            return self._write_image(recipe, lock, None, layer_tmp, info.digest, info.size,
                                     created_by=f"buildsys: debootstrap {lock.base.suite} ({lock.base.variant})")

    def _child_layer(self, recipe: Recipe, parent: LayerRecord, prefix: Sequence[str]) -> LayerRecord:
        """Run the layer's steps in a container of the parent image, network none; take its diff."""
        lock = self.locks[recipe.name]
        with self.run_steps(recipe, lock, parent) as (container, result, scratch):
            self._check_packages(recipe, prefix, steps.installed_packages(result.output), "apt")
            self.report(recipe.name, "normalize", "the container's filesystem diff")
            layer_tmp = scratch / "layer.tar"
            with open(layer_tmp, "wb") as dst:
                upper = container.upper_dir()
                if upper is not None:
                    info = normalize_dir(upper, dst, lock.source_date_epoch, drop_prefixes=(VENDOR_MOUNT,))
                else:  # a remote engine: slower (grows with the image's depth) but correct
                    with tempfile.TemporaryFile(dir=self.store.tmp) as raw:
                        container.export_last_layer(raw)
                        raw.seek(0)
                        info = normalize_tar(raw, dst, lock.source_date_epoch, drop_prefixes=(VENDOR_MOUNT,))
            return self._write_image(recipe, lock, parent, layer_tmp, info.digest, info.size,
                                     created_by=f"buildsys: {recipe.name} ({_summary(recipe)})")

    @contextlib.contextmanager
    def run_steps(self, recipe: Recipe, lock: Lock, parent: LayerRecord,
                  ) -> Iterator[tuple[Container, RunResult, Path]]:
        """Stage the layer's inputs and run its build script in a container of the parent, network none.

        Yields the stopped container (to read its diff, or commit it), the run's
        result and a scratch folder; a failed step raises, naming the step.
        """
        assert self.engine is not None, "building a layer needs the docker engine"
        self.load(parent, tag=None)
        with self.store.scratch(f"build-{recipe.name}") as tmp:
            staged = steps.stage_layer(self.store, recipe, lock, Path(tmp) / "stage")
            with self.engine.container(parent.config_digest, staged.command, env=staged.env, network="none",
                                       mounts=[(str(staged.folder), steps.MOUNT, True)],
                                       hostname=bootstrap.BUILD_HOSTNAME, user="0:0", workdir="/") as container:
                self.report(recipe.name, "run", f"container on {parent.config_digest[:19]}, network none")
                result = container.run(on_output=lambda line: self._on_build_output(recipe.name, line))
                if result.exit_code != 0:
                    step = steps.failed_step(result.output)
                    hint = (bootstrap.NO_NETWORK_HINT if bootstrap.tried_network(result.output) else
                            f"fix the step in {recipe.path}, then run `buildsys build {recipe.name}` again")
                    raise BuildError(recipe.name, f"{step} (exit {result.exit_code})", result.output, hint=hint)
                yield container, result, Path(tmp)

    def _on_build_output(self, recipe: str, line: str) -> None:
        if line.startswith(steps.STEP_MARKER):
            self.report(recipe, "step", line.removeprefix(steps.STEP_MARKER))

    def _check_packages(self, recipe: Recipe, prefix: Sequence[str], installed: Mapping[str, str] | None,
                        step: str) -> None:
        """dpkg must hold exactly the locked packages of the chain so far: the locks are the bill of materials."""
        if installed is None:
            return
        expected: dict[str, str] = {}
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

    def _write_image(self, recipe: Recipe, lock: Lock, parent: LayerRecord | None, layer_file: Path,
                     diff_id: str, size: int, created_by: str) -> LayerRecord:
        layout = self.layout
        digest = layout.add_blob_file(layer_file, digest=diff_id)
        parent_config = layout.read_config(parent.config_digest) if parent else None
        labels = oci_labels(recipe.name, recipe.recipe_hash, lock.lock_hash, recipe.description)
        config = make_config(parent=parent_config, diff_id=diff_id, epoch=lock.source_date_epoch,
                             image=recipe.image, labels=labels, created_by=created_by)
        layers = [*(parent.layers if parent else ()), (digest, size)]
        img = layout.write_image(config, layers)
        return LayerRecord(recipe=recipe.name, config_digest=img.config_digest,
                           manifest_digest=img.manifest_digest, diff_ids=tuple(img.diff_ids),
                           layers=tuple((d, s) for d, s in layers))

    # -- docker ---------------------------------------------------------------

    def load(self, record: LayerRecord, tag: str | None = None) -> None:
        """Make sure docker has the image (loading it from the store), and tag it."""
        if self.engine is None:
            return
        if not self.engine.has_image(record.config_digest):
            # When docker has the parent image, send only the new layer: the load then
            # costs what the layer holds, not the whole image (measured: 0.94 s of a
            # 1.34 s incremental build went to re-sending the lower layers).
            parent = next((r for r, _ in self._memo.values() if r.layers == record.layers[:-1]), None)
            omit = len(record.layers) - 1 if parent and self.engine.has_image(parent.config_digest) else 0
            self.report(record.recipe, "load", "docker load" + (" (new layer only)" if omit else ""))
            try:
                self._docker_load(record, omit)
            except EngineError:
                if not omit:
                    raise
                self._docker_load(record, 0)  # an engine that wants every layer after all
        if tag:
            previous = self.engine.tag(record.config_digest, tag, "latest")
            # Tags are per engine, recipes per project: say when a tag moves away from an
            # image that this store did not build (another project's recipe of the same name).
            if previous and previous != record.config_digest and not self.layout.has_blob(previous):
                self.report(record.recipe, "warning", f"{tag}:latest pointed at {previous[:19]}, which this store "
                                                      f"did not build (another project?); it now points at "
                                                      f"{record.config_digest[:19]}")
            self.layout.set_ref(tag, record.manifest_digest)

    def _docker_load(self, record: LayerRecord, omit_layers: int) -> None:
        assert self.engine is not None
        with tempfile.TemporaryFile(dir=self.store.tmp) as archive:
            write_docker_archive(self.layout, record.manifest_digest, [], archive, omit_layers=omit_layers)
            archive.seek(0)
            self.engine.load(archive)


def _summary(recipe: Recipe) -> str:
    parts = []
    if recipe.apt_packages:
        parts.append(f"apt {len(recipe.apt_packages)}")
    if recipe.pip_packages:
        parts.append(f"pip {len(recipe.pip_packages)}")
    if recipe.files:
        parts.append(f"files {len(recipe.files)}")
    if recipe.run:
        parts.append(f"run {len(recipe.run)}")
    return ", ".join(parts) or "config only"
