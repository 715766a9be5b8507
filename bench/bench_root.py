"""Time a Debian root build end to end, in one process, and print the figures.

lock, fetch, a cold build (split into stages), no-op rebuilds, and the
normalizer's throughput against plain sha256 over the same rootfs tar. It
prints figures and asserts nothing: it is for seeing where the time goes.

    .venv/bin/python bench/bench_root.py                 # throw-away project and store
    .venv/bin/python bench/bench_root.py --store /tmp/s  # keep the vendored .debs for the next run

The cold build tags ``root:latest`` in docker, as ``buildsys build`` does. When
docker already holds the image (a reproducible build of the same lock gives the
same image id), nothing is loaded, and the load stage says so.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from benchlib import MB, Events, timed
from rich.console import Console
from rich.table import Table

import buildsys.build.layers as build_module  # where the Debian root calls normalize_tar
from buildsys.build.builder import Builder
from buildsys.core.store import Store
from buildsys.ecosystems import artifacts as locked_artifacts
from buildsys.ecosystems.debian_root import DebianBaseLock
from buildsys.engine import Engine
from buildsys.fetch.vendor import fetch
from buildsys.lock import fresh_locks, lock_recipes
from buildsys.model.graph import build_graph
from buildsys.model.recipe import load_recipes
from buildsys.oci.layer.normalize import LayerInfo, normalize_tar

RECIPE = "root"
ROOT_TOML = '[base]\ndebian = { suite = "bookworm", variant = "minbase" }\n'
CHUNK = 1 << 20

console = Console(highlight=False, width=120)


@contextlib.contextmanager
def watch_normalize(events: Events, keep: Path) -> Iterator[None]:
    """Wrap the Builder's ``normalize_tar`` to mark when it ends and keep its input tar.

    ``Builder`` emits no event between normalizing and writing the image, and it
    deletes the mmdebstrap tar; a hard link keeps that tar for the throughput runs
    without a second bootstrap.
    """
    real = build_module.normalize_tar

    def marked(src: IO[bytes], dst: IO[bytes], epoch: int, drop_prefixes: tuple[str, ...] = ()) -> LayerInfo:
        _link_or_copy(Path(src.name), keep)  # type: ignore[arg-type]
        info = real(src, dst, epoch, drop_prefixes)
        events(RECIPE, "normalized", f"{info.entries} entries")
        return info

    build_module.normalize_tar = marked  # type: ignore[assignment]
    try:
        yield
    finally:
        build_module.normalize_tar = real


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def normalize_to_null(path: Path, epoch: int) -> LayerInfo:
    with open(path, "rb") as src, open(os.devnull, "wb") as dst:
        return normalize_tar(src, dst, epoch)


def stage_rows(events: Events, end: float) -> list[tuple[str, float]]:
    """Split the cold build at the Builder's own events (each stage ends where the next begins)."""
    marks = [
        ("check vendored inputs (sha256)", events.t0),
        ("bootstrap (mmdebstrap, offline)", events.at(RECIPE, "bootstrap")),
        ("normalize rootfs tar", events.at(RECIPE, "normalize")),
        ("write OCI image + cache entry", events.at(RECIPE, "normalized")),
        ("docker load + tag" if events.at(RECIPE, "load") else "docker tag (image already loaded)",
         events.at(RECIPE, "built")),
    ]
    known = [(name, t) for name, t in marks if t is not None]
    ends = [t for _, t in known[1:]] + [end]
    return [(name, stop - start) for (name, start), stop in zip(known, ends, strict=True)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", type=Path, help="project folder to use (recipes/root.toml is written if absent); "
                   "default: a throw-away one")
    p.add_argument("--store", type=Path, help="store folder to use (kept); default: a throw-away one")
    p.add_argument("--keep", action="store_true", help="keep the throw-away folder and print where it is")
    p.add_argument("--rebuilds", type=int, default=5, help="no-op rebuilds to time (default 5)")
    p.add_argument("--runs", type=int, default=3, help="normalize and sha256 runs each (default 3)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="buildsys-bench-"))
    store = Store((args.store or work / "store").resolve())
    keep_tar = store.tmp / f"bench-rootfs-{os.getpid()}.tar"
    try:
        return run(args, work, store, keep_tar)
    finally:
        keep_tar.unlink(missing_ok=True)
        if args.keep:
            console.print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path, store: Store, keep_tar: Path) -> int:
    project = (args.project or work / "project").resolve()
    recipe_file = project / "recipes" / f"{RECIPE}.toml"
    if not recipe_file.is_file():
        recipe_file.parent.mkdir(parents=True, exist_ok=True)
        recipe_file.write_text(ROOT_TOML)
    console.print(f"project {project}\nstore   {store.root}")
    graph = build_graph(load_recipes(project))

    # 1. lock and fetch
    lock_s, outcomes = timed(lambda: lock_recipes(project, store, graph, [RECIPE]))
    status = ", ".join(f"{o.recipe}: {o.status}" for o in outcomes)
    console.print(f"lock            {lock_s:8.2f} s  ({status})")
    locks = fresh_locks(project, graph, [RECIPE])
    lock = locks[RECIPE]
    base = lock.get(DebianBaseLock)
    assert base is not None
    artifacts = sorted({a.sha256: a for a in locked_artifacts(lock)}.values(), key=lambda a: a.filename)
    report = fetch(store, artifacts, progress=False)
    fetch_mb = report.bytes / MB
    console.print(f"fetch           {report.seconds:8.2f} s  ({report.downloaded} downloaded, {fetch_mb:.1f} MB, "
                  f"{report.skipped} already in the store; {len(base.packages)} packages locked)")

    # 2. cold build
    connect_s, engine = timed(Engine.connect)
    console.print(f"engine connect  {connect_s:8.3f} s")
    events = Events()
    with watch_normalize(events, keep_tar):
        cold = Builder(store, graph, locks, engine=engine, no_cache=True, progress=events).build([RECIPE])[0]
    cold_end = time.monotonic()
    cold_s = cold_end - events.t0
    console.print(f"cold build      {cold_s:8.2f} s  (cached={cold.cached}, image {cold.record.config_digest[:19]})")
    for name, seconds in stage_rows(events, cold_end):
        console.print(f"  {name:<36} {seconds:8.2f} s")

    # 3. no-op rebuilds: a new Builder each time, as a new `buildsys build` would make
    noop: list[float] = []
    all_cached = True
    for _ in range(args.rebuilds):
        seconds, images = timed(lambda: Builder(store, graph, locks, engine=engine).build([RECIPE]))
        image = images[0]
        all_cached &= image.cached and image.record == cold.record
        noop.append(seconds)
    noop_med = statistics.median(noop)
    console.print(f"no-op rebuild   {noop_med * 1e3:8.1f} ms median, {min(noop) * 1e3:.1f} ms min over {len(noop)} "
                  f"(cached={all_cached})")
    if not all_cached:
        console.print("[red]a no-op rebuild was not served from the cache (or gave another image)[/]")

    # 4. normalizer vs sha256 over the real mmdebstrap tar, page cache warm
    tar_mb = keep_tar.stat().st_size / MB
    sha256_of(keep_tar)  # warm the page cache
    sha_runs = [timed(lambda: sha256_of(keep_tar))[0] for _ in range(args.runs)]
    norm_runs: list[float] = []
    info: LayerInfo | None = None
    for _ in range(args.runs):
        seconds, info = timed(lambda: normalize_to_null(keep_tar, lock.source_date_epoch))
        norm_runs.append(seconds)
    assert info is not None
    sha_mbs, norm_mbs = tar_mb / min(sha_runs), tar_mb / min(norm_runs)
    console.print(f"rootfs tar      {tar_mb:8.1f} MB, {info.entries} entries -> layer {info.size / MB:.1f} MB")
    console.print(f"sha256          {sha_mbs:8.0f} MB/s best  (runs: {', '.join(f'{s:.3f}' for s in sha_runs)} s)")
    console.print(f"normalize       {norm_mbs:8.0f} MB/s best  (runs: {', '.join(f'{s:.3f}' for s in norm_runs)} s), "
                  f"{info.entries / min(norm_runs):,.0f} entries/s")

    # 5. summary
    table = Table(title=f"Debian bookworm minbase root ({len(base.packages)} packages)", title_justify="left")
    for col in ("lock s", "fetch s (MB)", "cold build s", "no-op rebuild s (median)", "normalize MB/s",
                "sha256 MB/s", "normalize/sha256"):
        table.add_column(col, justify="right")
    table.add_row(f"{lock_s:.2f}", f"{report.seconds:.2f} ({fetch_mb:.1f})", f"{cold_s:.2f}", f"{noop_med:.4f}",
                  f"{norm_mbs:.0f}", f"{sha_mbs:.0f}", f"{norm_mbs / sha_mbs:.2f}")
    console.print(table)
    return 0 if all_cached else 1


if __name__ == "__main__":
    sys.exit(main())
