"""What buildsys adds to a layer's install, on the bundled ``jupyter`` chain (base -> python -> jupyter).

In one process, with figures that are ratios against a peer measured in the
same run:

- per layer of a cold build (``--no-cache``): install (the container's steps),
  normalize (upper dir -> canonical layer, written to the store, hashed and
  streamed into ``docker load`` in one pass), load (what docker does after the
  last byte) and the overhead ratio (normalize + load) / install;
- the normalizer alone on the stored ``jupyter`` layer (against its parent
  chain, to /dev/null) next to ``sha256sum`` of the same file;
- ``docker build`` of the same chain written as a Dockerfile, cold and cached;
- the no-op ``buildsys build jupyter`` as a user runs it (a new process).

Before the cold build, the chain's images above the root are removed from
docker (they are found from the store's cache: this store built them), so
that docker really applies the layers it is sent.

    .venv/bin/python bench/bench_layers.py --store .buildsys      # the project's store (vendor files there)
    .venv/bin/python bench/bench_layers.py --skip-docker-build   # without the Dockerfile comparison
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_chain import docker_comparison
from benchlib import MB, Events, timed
from rich.console import Console

from buildsys.build.builder import Builder
from buildsys.build.records import LayerRecord
from buildsys.core.store import Store
from buildsys.ecosystems import artifacts
from buildsys.engine import Engine
from buildsys.fetch.vendor import fetch
from buildsys.lock import fresh_locks
from buildsys.model.graph import build_graph
from buildsys.model.recipe import load_recipes
from buildsys.oci.layer.normalize import normalize_tar
from buildsys.oci.layer.tree import ParentTree

PROJECT = Path(__file__).resolve().parent.parent
LEAF = "jupyter"
console = Console(highlight=False, width=120)


def cached_records(store: Store) -> list[LayerRecord]:
    out = []
    for path in (store.cache / "layers").glob("*.json"):
        try:
            out.append(LayerRecord.from_json(json.loads(path.read_text())))
        except (ValueError, KeyError):
            continue
    return out


def forget_in_docker(engine: Engine, store: Store, chain: list[str]) -> int:
    """Remove this store's images of the chain above the root from docker, so the next load is a real one."""
    removed = 0
    for record in cached_records(store):
        if record.recipe in chain[1:] and engine.has_image(record.config_digest):
            engine.remove_image(record.config_digest)
            removed += 1
    return removed


def sha256sum_seconds(path: Path) -> float:
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache alike
    seconds, _ = timed(lambda: subprocess.run(["sha256sum", str(path)], stdout=subprocess.DEVNULL, check=True))
    return seconds


def normalize_alone(store: Store, record: LayerRecord, epoch: int) -> tuple[float, float]:
    """The stored top layer normalized again against its parent chain: (seconds, seconds of which parent index)."""
    layout_blob = store.oci / "blobs" / "sha256"
    blobs = [layout_blob / d.split(":", 1)[1] for d, _ in record.layers]
    started = time.perf_counter()
    parent = ParentTree.from_layers(blobs[:-1], index_dir=store.cache / "index")  # as the build reads it
    parent_s = time.perf_counter() - started
    with open(blobs[-1], "rb") as src, open(os.devnull, "wb") as dst:
        info = normalize_tar(src, dst, epoch, parent=parent)
    seconds = time.perf_counter() - started
    assert info.digest == record.diff_ids[-1], "the canonical layer does not normalize to itself"
    return seconds, parent_s


def noop_cli(project: Path, store: Store, runs: int) -> list[float]:
    cmd = [sys.executable, "-m", "buildsys", "-C", str(project), "--store", str(store.root), "build", LEAF]
    out = []
    for _ in range(runs):
        seconds, done = timed(lambda: subprocess.run(cmd, capture_output=True, text=True))
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        out.append(seconds)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--project", type=Path, default=PROJECT, help="project with the jupyter recipe and its locks")
    p.add_argument("--store", type=Path, help="store (default: a throw-away one; vendor files are fetched)")
    p.add_argument("--skip-docker-build", action="store_true", help="leave out the Dockerfile comparison")
    p.add_argument("--rebuilds", type=int, default=5, help="no-op CLI runs to time")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="buildsys-bench-layers-"))
    store = Store((args.store or work / "store").resolve())
    project = args.project.resolve()
    graph = build_graph(load_recipes(project))
    chain = graph.chain(LEAF)
    locks = fresh_locks(project, graph, [LEAF])
    arts = sorted({a.sha256: a for lk in locks.values() for a in artifacts(lk)}.values(), key=lambda a: a.filename)
    fetched = fetch(store, arts, progress=False)
    console.print(f"project {project}\nstore   {store.root}\nfetch: {fetched.downloaded} downloaded, "
                  f"{fetched.skipped} in the store")
    engine = Engine.connect()

    # A build that fills the cache (if it is not yet), then the images above the root leave docker.
    Builder(store, graph, locks, engine=engine).build([LEAF])
    gone = forget_in_docker(engine, store, chain)
    console.print(f"removed {gone} image(s) of this store's {' -> '.join(chain[1:])} from docker")

    events = Events()
    builder = Builder(store, graph, locks, engine=engine, no_cache=True, progress=events)
    cold_s, (image,) = timed(lambda: builder.build([LEAF]))
    console.print(f"\ncold build (--no-cache) {cold_s:7.1f} s, image {image.record.config_digest}")
    console.print(f"  {'layer':<8} {'MB':>7} {'install':>8} {'normalize':>9} {'load':>7} {'(n+l)/i':>8} "
                  f"{'norm MB/s':>9}")
    for i, name in enumerate(chain):
        t = builder.timings.get(tuple(chain[: i + 1]))
        size = image.layers[i].layers[-1][1] / MB
        if t is None:
            console.print(f"  {name:<8} {size:7.0f}  (cached)")
            continue
        ratio = (t["normalize"] + t["load"]) / t["install"] if t["install"] else float("nan")
        console.print(f"  {name:<8} {size:7.0f} {t['install']:8.2f} {t['normalize']:9.2f} {t['load']:7.2f} "
                      f"{ratio:8.2f} {size / t['normalize']:9.0f}")

    top = image.record
    size = top.layers[-1][1]
    blob = store.oci / "blobs" / "sha256" / top.layers[-1][0].split(":", 1)[1]
    sum_s = sha256sum_seconds(blob)
    alone_s, parent_s = normalize_alone(store, top, locks[LEAF].source_date_epoch)
    t = builder.timings[tuple(chain)]
    console.print(f"\n{LEAF} layer: {size / MB:.0f} MB")
    console.print(f"  sha256sum                       {sum_s:6.2f} s  {size / MB / sum_s:6.0f} MB/s")
    console.print(f"  normalizer alone (to /dev/null) {alone_s:6.2f} s  {size / MB / alone_s:6.0f} MB/s  "
                  f"= {sum_s / alone_s:.2f} x sha256sum (parent chain index {parent_s:.2f} s of it)")
    console.print(f"  normalizer in the build         {t['normalize']:6.2f} s  {size / MB / t['normalize']:6.0f} MB/s  "
                  f"= {sum_s / t['normalize']:.2f} x sha256sum (streamed into docker load as it is written)")
    console.print(f"  (normalize + load) / install    {(t['normalize'] + t['load']) / t['install']:6.2f}  "
                  f"(goal <= 0.5)")

    runs = noop_cli(project, store, args.rebuilds)
    console.print(f"\nno-op `buildsys build {LEAF}` (new process): median {statistics.median(runs):.3f} s, "
                  f"min {min(runs):.3f} s over {len(runs)} (goal < 0.5 s)")

    if not args.skip_docker_build:
        console.print("\nthe same chain as a Dockerfile, docker build from buildsys's root image:")
        figures = docker_comparison(engine, graph, chain, image, work, rebuilds=2)
        console.print(f"docker build: cold {figures.cold.seconds:.1f} s, cached {figures.cached_med:.2f} s; "
                      f"buildsys: cold {cold_s:.1f} s, no-op {statistics.median(runs):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
