"""The three kinds of layer, made on a cache miss: a Debian root, a registry-image root, a child layer.

A Debian root is bootstrapped offline (``bootstrap``); a registry root is the
image's vendored layers under a canonical config (``baseimage``); a child layer
runs its steps in a container of the parent image, network none, and keeps what
changed against the parent chain's files. Each is normalized, written into the
store's OCI layout and loaded into docker.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.build import baseimage, bootstrap, steps
from buildsys.build.checks import check_built
from buildsys.build.load import Loader
from buildsys.build.records import LayerRecord
from buildsys.core.errors import BuildError
from buildsys.core.progress import Progress
from buildsys.core.store import Store
from buildsys.ecosystems.debian_root import DebianBaseLock
from buildsys.ecosystems.registry_image import ImageBaseLock
from buildsys.engine import EngineError
from buildsys.model.lockfile import Lock
from buildsys.model.recipe import Recipe
from buildsys.oci.compress import CompressedBlobs, CompressingSink, Method
from buildsys.oci.image import (
    NO_META,
    ImageMeta,
    OciLayout,
    canonical_bytes,
    make_config,
    oci_labels,
    write_streamed_archive,
)
from buildsys.oci.layer.inputs import read_filesystem, read_tar, read_upper_dir
from buildsys.oci.layer.normalize import LayerPlan, plan_layer
from buildsys.oci.layer.tree import ParentTree

if TYPE_CHECKING:  # docker's client is imported only when an engine is used (a no-op build needs none)
    from buildsys.engine import Container, RunResult

# The vendor store's mount point inside build containers; never part of a layer.
VENDOR_MOUNT = "buildsys"


@dataclass
class LayerMaker:
    """Makes one layer's image on its parent's; times each part in ``timings``."""

    store: Store
    locks: Mapping[str, Lock]
    loader: Loader
    progress: Progress
    meta: Callable[[str], ImageMeta] = lambda recipe: NO_META  # Builder.meta: revision, source, base
    # Compress each layer made here while it is written (the store's ``CompressedBlobs`` entry, so publish,
    # --cache-to and --verify never read it again to compress it); None: only when it leaves.
    compress: Method | None = None

    @property
    def layout(self) -> OciLayout:
        return OciLayout(self.store.oci)

    def root(self, recipe: Recipe, timings: dict[str, float]) -> LayerRecord:
        lock = self.locks[recipe.name]
        if lock.get(ImageBaseLock) is not None:
            return self._image_root(recipe, timings)
        base = lock.get(DebianBaseLock)
        assert base is not None
        with self.store.scratch(f"build-{recipe.name}") as tmp:
            self.progress(recipe.name, "bootstrap", f"mmdebstrap {base.suite}/{base.variant}, "
                                                  f"{len(base.packages)} packages, no network")
            t0 = time.monotonic()
            result = bootstrap.bootstrap_debian(self.store, lock, recipe.run, Path(tmp))
            t1 = time.monotonic()
            self.progress(recipe.name, "normalize", f"{result.tarball.stat().st_size / 1e6:.0f} MB rootfs")
            with open(result.tarball, "rb") as src:
                plan = plan_layer(read_tar(src), lock.source_date_epoch)
                # Every root is needed by docker next (its child's build, or its own run): it is streamed into
                # docker load as it is written, hashed (and compressed, with ``compress``), as a child layer is.
                record, t2 = self._write_layer(recipe, lock, None, plan, Path(tmp) / "layer.tar",
                                               _history(recipe, lock, f"mmdebstrap {base.suite}/{base.variant}, "
                                                                      f"{len(base.packages)} packages"))
            result.tarball.unlink()
            self.loader.load(record)  # loaded above: this only notes it (and loads it where it was not streamed)
            timings.update(install=t1 - t0, normalize=t2 - t1, load=time.monotonic() - t2)
            return record

    def _image_root(self, recipe: Recipe, timings: dict[str, float]) -> LayerRecord:
        """A registry root: the image's vendored layers, unpacked and checked, under its canonical config."""
        lock = self.locks[recipe.name]
        base = lock.get(ImageBaseLock)
        assert base is not None
        t0 = time.monotonic()
        self.progress(recipe.name, "unpack", f"{base.reference}: {len(base.layers)} layer(s) from the vendor store, "
                                           "no registry")
        upstream = baseimage.read_config(self.store, recipe.name, base)
        layers = baseimage.unpack_layers(self.store, self.layout, recipe.name, base, upstream,
                                         compress=lambda: self._compressing(None))
        t1 = time.monotonic()
        img = self.layout.write_image(self._image_root_config(recipe, lock, base, upstream), layers)
        record = LayerRecord(recipe=recipe.name, config_digest=img.config_digest,
                             manifest_digest=img.manifest_digest, diff_ids=tuple(img.diff_ids),
                             layers=tuple(layers))
        t2 = time.monotonic()
        try:
            self.loader.load(record)
        except EngineError as e:  # its layers matched their locked digests: the base itself is refused
            raise BuildError(recipe.name, f"docker load of the base image {base.reference}", e.message,
                             hint=f"its layers are the ones locked (each matched its digest and diff_id), so this "
                                  f"engine refuses the image itself: pick another image or digest in "
                                  f"{recipe.path} [base] image, then `buildsys lock {recipe.name}`") from e
        timings.update(install=t1 - t0, normalize=t2 - t1, load=time.monotonic() - t2)
        return record

    def _image_root_config(self, recipe: Recipe, lock: Lock, base: ImageBaseLock,
                           upstream: dict[str, Any]) -> dict[str, Any]:
        os_name, _, arch = base.platform.partition("/")
        labels = oci_labels(recipe.name, recipe.recipe_hash, lock.lock_hash, recipe.description,
                            epoch=lock.source_date_epoch, meta=self.meta(recipe.name))
        return make_config(parent=baseimage.canonical_base_config(upstream, lock.source_date_epoch), diff_id=None,
                           epoch=lock.source_date_epoch, image=recipe.image, labels=labels,
                           created_by=_history(recipe, lock, f"on {base.reference}"),
                           architecture=arch.split("/")[0], os=os_name)

    def relabel(self, recipe: Recipe, same_files: LayerRecord, parent: LayerRecord | None) -> LayerRecord:
        """``same_files``'s layers under a config with today's labels: a layer whose files and parent's files are
        the ones made before, where only what the labels say moved (a commit, a clean or modified checkout:
        ``core/vcs.py``). Rewrites a config and a manifest; builds, normalizes and loads nothing."""
        lock = self.locks[recipe.name]
        base = lock.get(ImageBaseLock)
        if base is not None:
            config = self._image_root_config(recipe, lock, base, baseimage.read_config(self.store, recipe.name, base))
        else:
            made = self.layout.read_config(same_files.config_digest)
            config = self._config(recipe, lock, parent, same_files.diff_ids[-1], made["history"][-1]["created_by"])
        img = self.layout.write_image(config, same_files.layers)
        return LayerRecord(recipe=recipe.name, config_digest=img.config_digest, manifest_digest=img.manifest_digest,
                           diff_ids=tuple(img.diff_ids), layers=tuple(same_files.layers))

    def child(self, recipe: Recipe, parent: LayerRecord, prefix: Sequence[str],
                     timings: dict[str, float]) -> LayerRecord:
        """Run the layer's steps in a container of the parent image, network none; take its diff.

        The diff is read from the overlay upper dir where this host can, else from
        commit + save; both are reduced to what changed against the parent chain's
        files (``layer.ParentTree``), so the engine's storage does not show.
        """
        lock = self.locks[recipe.name]
        created_by = _history(recipe, lock, _summary(recipe))
        t0 = time.monotonic()
        with self.run_steps(recipe, lock, parent) as (container, result, scratch):
            t1 = time.monotonic()
            self.progress(recipe.name, "normalize", "the container's filesystem diff")
            below = ParentTree.from_layers((self.layout.blob_path(d) for d, _ in parent.layers),
                                           index_dir=self.store.cache / "index")
            t_read = time.monotonic()
            check_built(self.locks, recipe, prefix, result.output, below)
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
                self.progress(recipe.name, "normalized",
                            f"{plan.entries} entries, {plan.size / 1e6:.0f} MB: parent chain {t_read - t1:.1f}s, "
                            f"{'upper dir' if upper is not None else 'export'} {t_plan - t_read:.1f}s, compare "
                            f"{t_write - t_plan:.1f}s, write+hash+stream {t2 - t_write:.1f}s")
        timings.update(install=t1 - t0, normalize=t2 - t1, load=time.monotonic() - t2)
        return record

    def _write_layer(self, recipe: Recipe, lock: Lock, parent: LayerRecord | None, plan: LayerPlan,
                     layer_file: Path, created_by: str) -> tuple[LayerRecord, float]:
        """Write the canonical layer to the store and, in the same pass, into ``docker load``.

        Return the record and when the layer's last byte was written: what docker
        does after that (apply the layer it received) is the load's own time.
        """
        done: dict[str, Any] = {}
        store_writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buildsys-store")
        sink = self._compressing(plan.size)

        def write_layer(into: Any = None) -> bytes:
            with open(layer_file, "wb") as f:
                info = plan.write(f, *(s for s in (into, sink) if s is not None))
            done["at"] = time.monotonic()
            config = self._config(recipe, lock, parent, info.digest, created_by)

            def stored() -> LayerRecord:
                record = self._write_image(recipe, lock, parent, layer_file, info.digest, info.size, created_by,
                                           config)
                if sink is not None:  # its last blocks are compressed while docker applies the layer
                    sink.keep(info.digest)
                return record

            # The store's copy is made durable (fsync, rename, config, manifest) while docker
            # applies the layer: docker needs only the config bytes, which are ready now.
            done["record"] = store_writes.submit(stored)
            return canonical_bytes(config)

        try:
            engine = self.loader.docker()
            if engine is None:
                write_layer()
            else:
                self.progress(recipe.name, "load", f"docker load{' (new layer only)' if parent else ''}, streamed as "
                                                   "it is written")
                lower = list(parent.diff_ids) if parent is not None else []
                engine.load_stream(lambda out: write_streamed_archive(out, lower, plan.size, write_layer))
            record: LayerRecord = done["record"].result()
        finally:
            store_writes.shutdown(wait=True)
            if sink is not None:
                sink.discard()  # after keep(): nothing left; after a failure: its temporary file
        return record, done["at"]

    def _compressing(self, size: int | None) -> CompressingSink | None:
        """A sink that compresses a layer into the store as it is written, when this build compresses
        (``compress``); zstd needs the layer's size up front (a registry root's layers have none)."""
        if self.compress is None or (size is None and self.compress.format == "zstd"):
            return None
        return CompressedBlobs(self.store).sink(self.compress, size=size)

    @contextlib.contextmanager
    def run_steps(self, recipe: Recipe, lock: Lock, parent: LayerRecord,
                  ) -> Iterator[tuple[Container, RunResult, Path]]:
        """Stage the layer's inputs and run its build script in a container of the parent, network none.

        Yields the stopped container (to read its diff, or commit it), the run's
        result and a scratch folder; a failed step raises, naming the step.
        """
        self.loader.load(parent, tag=None)
        with self.store.scratch(f"build-{recipe.name}") as tmp:
            staged = steps.stage_layer(self.store, recipe, lock, Path(tmp) / "stage")
            with self._container(recipe, parent, staged, namespaces=True) as (container, result):
                if not steps.lacks_namespaces(result):
                    yield container, self._checked(recipe, result), Path(tmp)
                    return
            self.progress(recipe.name, "warning", "the image has no setpriv (util-linux): steps run without a "
                          "fresh PID namespace each, so process IDs may differ between builds")
            with self._container(recipe, parent, staged, namespaces=False) as (container, result):
                yield container, self._checked(recipe, result), Path(tmp)

    @contextlib.contextmanager
    def _container(self, recipe: Recipe, parent: LayerRecord, staged: steps.Staged, *,
                   namespaces: bool) -> Iterator[tuple[Container, RunResult]]:
        """The build container of ``staged`` on ``parent``, run to its end (removed when the block ends)."""
        engine = self.loader.docker()
        assert engine is not None, "building a layer needs the docker engine"
        command = staged.command if namespaces else staged.plain_command
        with engine.container(parent.config_digest, command, env=staged.env, network="none",
                              mounts=[(str(staged.folder), steps.MOUNT, True)], hostname=bootstrap.BUILD_HOSTNAME,
                              user="0:0", workdir="/", namespaces=namespaces) as container:
            self.progress(recipe.name, "run", f"container on {parent.config_digest[:19]}, network none")
            yield container, container.run(on_output=lambda line: self._on_build_output(recipe.name, line))

    def _checked(self, recipe: Recipe, result: RunResult) -> RunResult:
        """``result`` of a build that succeeded; a failed step raises, naming the step."""
        if result.exit_code != 0:
            step = steps.failed_step(result.output)
            hint = (bootstrap.NO_NETWORK_HINT if bootstrap.tried_network(result.output) else
                    steps.failure_hint(result.output) or
                    f"fix the step in {recipe.path}, then run `buildsys build {recipe.name}` again")
            raise BuildError(recipe.name, f"{step} (exit {result.exit_code})", result.output, hint=hint)
        return result

    def _on_build_output(self, recipe: str, line: str) -> None:
        if line.startswith(steps.STEP_MARKER):
            self.progress(recipe, "step", line.removeprefix(steps.STEP_MARKER))
        elif line.startswith(steps.WARNING_MARKER):
            self.progress(recipe, "warning", line.removeprefix(steps.WARNING_MARKER))

    def _config(self, recipe: Recipe, lock: Lock, parent: LayerRecord | None, diff_id: str,
                created_by: str) -> dict[str, Any]:
        parent_config = self.layout.read_config(parent.config_digest) if parent else None
        labels = oci_labels(recipe.name, recipe.recipe_hash, lock.lock_hash, recipe.description,
                            epoch=lock.source_date_epoch, meta=self.meta(recipe.name))
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


def _history(recipe: Recipe, lock: Lock, what: str) -> str:
    """The layer's one line of history: its recipe, what it installed, the lock it was made from."""
    return f"buildsys: {recipe.name} ({what}; lock {lock.lock_hash.removeprefix('sha256:')[:12]})"


def _summary(recipe: Recipe) -> str:
    parts = [f"{part.KEY} {part.count()}" for part in recipe.sections if part.count()]
    if recipe.run:
        parts.append(f"run {len(recipe.run)}")
    return ", ".join(parts) or "config only"
