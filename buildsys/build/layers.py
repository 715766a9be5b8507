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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from buildsys.build import baseimage, bootstrap, steps, sublayers
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
from buildsys.oci.layer.normalize import LayerInfo, LayerPlan, Sink, canonical_entries, plan_layer
from buildsys.oci.layer.tree import ParentTree

if TYPE_CHECKING:  # docker's client is imported only when an engine is used (a no-op build needs none)
    from buildsys.engine import Container, Engine, RunResult

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

    def root(self, recipe: Recipe, timings: dict[str, float], load: bool = True) -> LayerRecord:
        """A root's image; into docker too unless ``load`` is False (nothing of this build runs on it)."""
        lock = self.locks[recipe.name]
        if lock.get(ImageBaseLock) is not None:
            return self._image_root(recipe, timings, load)
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
                # A root is needed by docker next (its child's build, or its own run): it is streamed into docker
                # load as it is written, hashed (and compressed, with ``compress``), as a child layer is.
                record, t2 = self._write_layers(recipe, lock, None, [sublayers.SubLayer(None, "", [])], [plan],
                                                Path(tmp), _history(recipe, lock, f"mmdebstrap {base.suite}/"
                                                                    f"{base.variant}, {len(base.packages)} packages"),
                                                load)
            result.tarball.unlink()
            if load:  # loaded above: this only notes it (and loads it where it was not streamed)
                self.loader.load(record)
            timings.update(install=t1 - t0, normalize=t2 - t1, load=time.monotonic() - t2)
            return record

    def _image_root(self, recipe: Recipe, timings: dict[str, float], load: bool) -> LayerRecord:
        """A registry root: the image's vendored layers, unpacked and checked, under its canonical config."""
        lock = self.locks[recipe.name]
        base = lock.get(ImageBaseLock)
        assert base is not None
        t0 = time.monotonic()
        self.progress(recipe.name, "unpack", f"{base.reference}: {len(base.layers)} layer(s) from the vendor store, "
                                           "no registry")
        upstream = baseimage.read_config(self.store, recipe.name, base)
        layers = baseimage.unpack_layers(self.store, self.layout, recipe.name, base, upstream,
                                         compress=lambda: self.compressing(None))
        t1 = time.monotonic()
        img = self.layout.write_image(self._image_root_config(recipe, lock, base, upstream), layers)
        record = LayerRecord(recipe=recipe.name, config_digest=img.config_digest,
                             manifest_digest=img.manifest_digest, diff_ids=tuple(img.diff_ids),
                             layers=tuple(layers))
        t2 = time.monotonic()
        try:
            if load:
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
            own = len(same_files.layers) - len(parent.layers if parent else ())
            ids = same_files.diff_ids[-own:]
            history = [str(h["created_by"]) for h in made["history"] if not h.get("empty_layer")][-own:]
            config = self._config(recipe, lock, parent, ids[-1], history[-1],
                                  below=list(zip(ids[:-1], history[:-1], strict=True)))
        img = self.layout.write_image(config, same_files.layers)
        return LayerRecord(recipe=recipe.name, config_digest=img.config_digest, manifest_digest=img.manifest_digest,
                           diff_ids=tuple(img.diff_ids), layers=tuple(same_files.layers))

    def child(self, recipe: Recipe, parent: LayerRecord, prefix: Sequence[str],
              timings: dict[str, float], load: bool = True) -> LayerRecord:
        """Run the layer's steps in a container of the parent image, network none; take its diff; stream it
        into docker as it is written unless ``load`` is False (nothing of this build runs on it).

        The diff is read from the overlay upper dir where this host can, else from
        commit + save; both are reduced to what changed against the parent chain's
        files (``layer.ParentTree``), so the engine's storage does not show.
        """
        lock = self.locks[recipe.name]
        created_by = _history(recipe, lock, _summary(recipe))
        groups = sublayers.groups(recipe, lock)  # a [[pip.layers]] that matches nothing fails before the install
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
                entries = canonical_entries(layer, lock.source_date_epoch, (VENDOR_MOUNT,), below)
                parts = sublayers.plan(lock, parent, groups, entries)
                plans = [LayerPlan(part.entries, lock.source_date_epoch) for part in parts]
                t_write = time.monotonic()
                record, t2 = self._write_layers(recipe, lock, parent, parts, plans, scratch, created_by, load)
                split = "" if len(parts) == 1 else " in {} layers ({})".format(len(parts), ", ".join(
                    f"{part.label(recipe.name)} {p.size / 1e6:.0f} MB" for part, p in zip(parts, plans, strict=True)))
                self.progress(recipe.name, "normalized",
                            f"{sum(p.entries for p in plans)} entries, {sum(p.size for p in plans) / 1e6:.0f} MB"
                            f"{split}: parent chain {t_read - t1:.1f}s, "
                            f"{'upper dir' if upper is not None else 'export'} {t_plan - t_read:.1f}s, compare "
                            f"{t_write - t_plan:.1f}s, write+hash+stream {t2 - t_write:.1f}s")
            t3 = time.monotonic()
        # cleanup: docker removing the build container (a GPU layer's GBs of files) and the scratch folder
        timings.update(install=t1 - t0, normalize=t2 - t1, load=t3 - t2, cleanup=time.monotonic() - t3)
        return record

    def _write_layers(self, recipe: Recipe, lock: Lock, parent: LayerRecord | None,
                      parts: Sequence[sublayers.SubLayer], plans: Sequence[LayerPlan], scratch: Path,
                      created_by: str, load: bool = True) -> tuple[LayerRecord, float]:
        """Write the canonical layers to the store and, in the same pass, into ``docker load`` (and, with
        ``compress``, into the store's compressed blobs).

        ``plans`` are the recipe's layers, bottom first (one, or a split layer's
        groups and then the recipe's own; a root's one, with no parent). A group
        expected to come out as before (``sublayers.Expected``) is only hashed
        when the store has its blob, and left out of the load when docker has it
        too (the bottom groups, up to the first it lacks); a digest other than the
        expected one is written again, whole. Return the record and when the last
        layer's last byte was written: what docker does after that (apply the
        layers it received) is the load's own time.
        """
        run = _Pass(self, recipe, lock, parent, parts, plans, scratch, created_by)
        try:
            engine = self.loader.docker() if load else None
            if engine is None:
                for i in range(len(plans)):
                    run.write(i)
                run.finish()
            else:
                run.load(engine)
            record = run.stored()
        finally:
            run.close()
        sublayers.Expected.remember(self.store, list(parts), record)
        return record, run.last_byte

    def compressing(self, size: int | None, known: str | None = None) -> CompressingSink | None:
        """A sink that compresses a layer into the store as it is written, when this build compresses
        (``compress``) and the store has no compressed form of ``known`` (the diff_id the layer is expected
        to have); zstd needs the layer's size up front (a registry root's layers have none)."""
        if self.compress is None or (size is None and self.compress.format == "zstd"):
            return None
        blobs = CompressedBlobs(self.store)
        if known is not None and blobs.lookup(self.compress, known) is not None:
            return None
        return blobs.sink(self.compress, size=size)

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
                created_by: str, below: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        parent_config = self.layout.read_config(parent.config_digest) if parent else None
        labels = oci_labels(recipe.name, recipe.recipe_hash, lock.lock_hash, recipe.description,
                            epoch=lock.source_date_epoch, meta=self.meta(recipe.name))
        return make_config(parent=parent_config, diff_id=diff_id, epoch=lock.source_date_epoch,
                           image=recipe.image, labels=labels, created_by=created_by, below=below)

    def _write_image(self, recipe: Recipe, parent: LayerRecord | None,
                     files: Sequence[tuple[Path | None, str, int]], config: dict[str, Any]) -> LayerRecord:
        """The recipe's layer files (path, diff_id, size; bottom first; no path: a blob the store has) into the
        store, and its image."""
        layout = self.layout
        layers = [*(parent.layers if parent else ()),
                  *((layout.add_blob_file(path, digest=diff_id) if path else diff_id, size)
                    for path, diff_id, size in files)]
        img = layout.write_image(config, layers)
        return LayerRecord(recipe=recipe.name, config_digest=img.config_digest,
                           manifest_digest=img.manifest_digest, diff_ids=tuple(img.diff_ids),
                           layers=tuple((d, s) for d, s in layers))


@dataclass
class _Pass:
    """One pass writing a recipe's layers (``LayerMaker._write_layers``): what each came out as, where it went."""

    maker: LayerMaker
    recipe: Recipe
    lock: Lock
    parent: LayerRecord | None
    parts: Sequence[sublayers.SubLayer]
    plans: Sequence[LayerPlan]
    scratch: Path
    created_by: str
    expected: list[sublayers.Expected | None] = field(init=False)
    infos: dict[int, LayerInfo] = field(default_factory=dict)
    files: dict[int, Path] = field(default_factory=dict)  # the layers whose blob is new to the store
    sinks: dict[int, CompressingSink] = field(default_factory=dict)  # the layers compressed in this pass
    last_byte: float = 0.0  # when the last layer's last byte was written
    record: Future[LayerRecord] | None = None  # the store's copy, made durable while docker applies the layers
    store_writes: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="buildsys-store"))

    def __post_init__(self) -> None:
        self.expected = [sublayers.Expected.find(self.maker.store, part.key) for part in self.parts]

    def _sink(self, i: int, known: str | None = None) -> list[Sink]:
        if i in self.sinks:
            self.sinks.pop(i).discard()
        if (sink := self.maker.compressing(self.plans[i].size, known)) is None:
            return []
        self.sinks[i] = sink
        return [sink]

    def write(self, i: int, into: Sink | None = None) -> None:
        """Layer ``i``: into the store (unless it holds it already), ``into`` (docker) and a compressor."""
        exp, plan = self.expected[i], self.plans[i]
        out = [*([into] if into is not None else []), *self._sink(i, exp.diff_id if exp else None)]
        if exp is not None and i not in self.files and self.maker.layout.has_blob(exp.diff_id):
            self.infos[i] = plan.write(*out)  # hashed (and sent to docker): the store has these bytes
            if self.infos[i].digest == exp.diff_id:
                return
            self.maker.progress(self.recipe.name, "warning", f"{self.parts[i].label(self.recipe.name)}: made "
                                f"{self.infos[i].digest[:19]}, not {exp.diff_id[:19]} as last time: written again")
            out = self._sink(i)  # docker has them already; the store (and a new compressor) gets them again
        path = self.scratch / f"layer{i}.tar"
        with open(path, "wb") as f:
            self.infos[i] = plan.write(f, *out)
        self.files[i] = path

    def finish(self) -> bytes:
        """The image's config, once every layer is written; the store's copy is made durable meanwhile."""
        n, m = len(self.plans), self.maker
        self.last_byte = time.monotonic()
        below = [(self.infos[k].digest, _history(self.recipe, self.lock, part.what, part.name))
                 for k, part in enumerate(self.parts[:-1])]
        config = m._config(self.recipe, self.lock, self.parent, self.infos[n - 1].digest, self.created_by,
                           below=below)

        def stored() -> LayerRecord:
            record = m._write_image(self.recipe, self.parent, [(self.files.get(k), self.infos[k].digest,
                                                                self.infos[k].size) for k in range(n)], config)
            for k, sink in self.sinks.items():  # their last blocks are compressed while docker applies the layers
                sink.keep(self.infos[k].digest)
            return record

        # Docker needs only the config bytes, which are ready now; fsync, rename, config and manifest of the
        # store's copy happen while it applies the layers.
        self.record = self.store_writes.submit(stored)
        return canonical_bytes(config)

    def stored(self) -> LayerRecord:
        assert self.record is not None, "finish() makes the record"
        return self.record.result()

    def docker_has(self, engine: Engine) -> int:
        """How many bottom groups docker has: those made for one image it has (on these parent layers, so it
        has their chain), up to the first expected otherwise; never the recipe's own top layer."""
        first = self.expected[0]
        have = 0
        if first is not None and engine.has_image(first.image):
            while have < len(self.expected) - 1 and (exp := self.expected[have]) is not None \
                    and exp.image == first.image:
                have += 1
        return have

    def load(self, engine: Engine) -> None:
        """Into ``docker load`` the layers docker lacks, each written into it as it is made."""
        have = self.docker_has(engine)
        for i in range(have):
            self.write(i)
        if any(i in self.files for i in range(have)):  # one came out otherwise: docker lacks it, send them all
            have = 0
        sent = len(self.plans) - have
        self.maker.progress(self.recipe.name, "load", f"docker load ({sent} new layer{'s' if sent > 1 else ''}"
                            + (f"; {have} it has" if have else "") + "), streamed as written")

        def streamed(k: int, sink: IO[bytes]) -> bytes | None:
            self.write(have + k, sink)
            return self.finish() if have + k == len(self.plans) - 1 else None

        lower = [*(self.parent.diff_ids if self.parent else ()), *(self.infos[i].digest for i in range(have))]
        try:
            engine.load_stream(lambda sink: write_streamed_archive(sink, lower, [p.size for p in self.plans[have:]],
                                                                   streamed))
        except EngineError:
            if not have or self.record is None:
                raise
            # Refused for want of a layer it was expected to have (removed meanwhile): from the store.
            self.maker.progress(self.recipe.name, "load", "docker lacked a layer it had: loading from the store")
            self.maker.loader.load(self.stored())

    def close(self) -> None:
        self.store_writes.shutdown(wait=True)
        for sink in self.sinks.values():
            sink.discard()  # after keep(): nothing left; after a failure: its temporary file


def _history(recipe: Recipe, lock: Lock, what: str, group: str | None = None) -> str:
    """A layer's one line of history: its recipe (and group, of a split layer), what it installed, the lock it
    was made from."""
    name = f"{recipe.name}/{group}" if group else recipe.name
    return f"buildsys: {name} ({what}; lock {lock.lock_hash.removeprefix('sha256:')[:12]})"


def _summary(recipe: Recipe) -> str:
    parts = [f"{part.KEY} {part.count()}" for part in recipe.sections if part.count()]
    if recipe.run:
        parts.append(f"run {len(recipe.run)}")
    return ", ".join(parts) or "config only"
