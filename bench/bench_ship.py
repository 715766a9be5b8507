"""Time shipping: publish and export of a built image, import's checks, and a chain from a registry cache.

    .venv/bin/python bench/bench_ship.py --store DIR [--recipe jupyter] \\
        [--chain-project DIR --chain-store DIR]

``--store`` must hold the image of ``--recipe`` for the current locks (run
``buildsys build jupyter`` first); nothing in it is changed. A docker-registry
is started on loopback for the run, with its own storage, and stopped after.
For publish: seconds and MB sent to an empty registry, then a second publish
(nothing to send). For export: seconds and archive size; then ``import`` into
a throw-away store (the engine has the image, so this is the check and copy).

With ``--chain-project``/``--chain-store`` (the ``tests/fixtures/chain`` project,
locked, fetched and built in that store): a cold build of the chain in a fresh
store that shares only the vendored files, against a build in another fresh
store with ``--cache-from`` a registry that ``--cache-to`` filled.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from benchlib import MB, Events, timed  # noqa: E402
from shipenv import docker_registry  # noqa: E402

from buildsys.build.builder import Builder  # noqa: E402
from buildsys.core.store import Store  # noqa: E402
from buildsys.engine import Engine  # noqa: E402
from buildsys.lock import fresh_locks  # noqa: E402
from buildsys.model.graph import build_graph  # noqa: E402
from buildsys.model.recipe import load_recipes  # noqa: E402
from buildsys.ship.export import export, import_archive  # noqa: E402
from buildsys.ship.publish import publish  # noqa: E402
from buildsys.ship.remote_cache import RemoteCache  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--project", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--recipe", default="jupyter")
    ap.add_argument("--chain-project", type=Path)
    ap.add_argument("--chain-store", type=Path)
    args = ap.parse_args()
    graph = build_graph(load_recipes(args.project))
    locks = fresh_locks(args.project, graph, [args.recipe])
    store = Store(args.store.resolve())
    with tempfile.TemporaryDirectory(prefix="bench-ship-") as tmp_s:
        tmp = Path(tmp_s)
        with docker_registry(tmp / "registry") as reg:
            secs, pub = timed(lambda: publish(store, graph, locks, args.recipe, f"{reg.host}/bench/{args.recipe}:1",
                                              force=True))
            print(f"publish {args.recipe}: {secs:.1f}s, {pub.blobs_sent} blobs, {pub.bytes_sent / MB:.0f} MB sent "
                  f"({pub.bytes_sent / MB / secs:.0f} MB/s), digest {pub.manifest_digest}")
            secs, pub = timed(lambda: publish(store, graph, locks, args.recipe, f"{reg.host}/bench/{args.recipe}:1",
                                              force=True))
            print(f"publish again (all there): {secs:.2f}s")
            out = tmp / "export.tar"
            secs, exp = timed(lambda: export(store, graph, locks, [args.recipe], out))
            print(f"export {args.recipe}: {secs:.1f}s, archive {exp.size / MB:.0f} MB "
                  f"({exp.size / MB / secs:.0f} MB/s)")
            engine = Engine.connect()
            secs, _ = timed(lambda: import_archive(Store(tmp / "import-store"), out, engine))
            print(f"import (check every blob, copy into a store; the engine has the image): {secs:.1f}s")
            out.unlink()
            if args.chain_project and args.chain_store:
                chain(args.chain_project.resolve(), Store(args.chain_store.resolve()), reg.host, tmp, engine)


def chain(project: Path, store: Store, host: str, tmp: Path, engine: Engine) -> None:
    graph = build_graph(load_recipes(project))
    locks = fresh_locks(project, graph, ["app"])
    cache = f"{host}/bench/chain-cache"
    Builder(store, graph, locks, engine=engine, remote=RemoteCache(None, cache)).build(["app"])
    cold = Store(tmp / "cold", vendor_root=store.vendor_root)
    events = Events()
    secs_cold, (img_cold,) = timed(lambda: Builder(cold, graph, locks, engine=engine, progress=events).build(["app"]))
    print(f"chain cold build (vendored inputs, no cache): {secs_cold:.1f}s, per layer {events.built_seconds()}")
    events = Events()
    warm = Store(tmp / "from-cache")
    secs_warm, (img_warm,) = timed(lambda: Builder(warm, graph, locks, engine=engine, progress=events,
                                                   remote=RemoteCache(cache, None)).build(["app"]))
    started = [s for _, _, s, _ in events.seen if s in ("run", "bootstrap")]
    print(f"chain --cache-from build (fresh store, nothing vendored): {secs_warm:.1f}s, containers started: "
          f"{len(started)}, same image: {img_warm.record == img_cold.record}")


if __name__ == "__main__":
    main()
