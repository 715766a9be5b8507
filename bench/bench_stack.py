"""The bundled stack, cold: each lockable image's size, its cold build time and the layers that take longest.

Every recipe of the project whose lock is fresh is built in a new store that
holds nothing but the vendored files (hard links to the project store's
``vendor/``, so downloads are not timed), one layer at a time in build order,
so each ``buildsys build`` builds exactly one new layer on cached parents. The
images NAME:latest of the chains are removed from docker first (unless a
container uses them), so loads are timed too; the builds tag them again. Then, unless ``--no-verify``,
``build --verify`` of each leaf rebuilds its whole chain from nothing and
compares. Recipes whose lock cannot be made here are listed with the reason.

    .venv/bin/python bench/bench_stack.py                   # the whole lockable stack
    .venv/bin/python bench/bench_stack.py jupyter r-base    # some chains only
    .venv/bin/python bench/bench_stack.py --markdown        # ... and the README's table

Prints per layer: seconds of its build (install, normalize, load); per image:
size in docker, layers, cold build time (the sum over its chain), verify
seconds and whether it was reproducible. Needs `buildsys fetch` done for the
recipes (it says which are missing). Uses several GB of disk for pytorch/keras.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import docker.errors

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from buildsys.core.errors import BuildsysError  # noqa: E402
from buildsys.lock import fresh_locks  # noqa: E402
from buildsys.model.graph import Graph, build_graph  # noqa: E402
from buildsys.model.recipe import load_recipes  # noqa: E402


def bs(store: Path, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "buildsys", "-C", str(ROOT), "--store", str(store), *args],
                          capture_output=True, text=True, check=False)
    return time.monotonic() - started, done


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipes", nargs="*", help="leaf recipes (default: every recipe with a fresh lock)")
    ap.add_argument("--store", type=Path, default=ROOT / ".buildsys", help="the store whose vendor/ to use")
    ap.add_argument("--no-verify", action="store_true", help="skip build --verify of each leaf")
    ap.add_argument("--markdown", action="store_true", help="also print the README's table")
    return ap.parse_args()


def lockability(graph: Graph) -> tuple[list[str], dict[str, str]]:
    """The recipes whose lock is fresh here, and for the others the first line of why not."""
    lockable, unlockable = [], {}
    for name in graph.order:
        try:
            fresh_locks(ROOT, graph, [name])
            lockable.append(name)
        except BuildsysError as e:
            unlockable[name] = str(e).splitlines()[0]
    return lockable, unlockable


def build_layers(store: Path, layers: list[str]) -> dict[str, dict]:
    """Build each layer on its cached parents, in order: its seconds, timings and image summary."""
    per_layer: dict[str, dict] = {}
    for name in layers:
        seconds, done = bs(store, "build", "--json", name)
        if done.returncode != 0:
            sys.exit(f"build {name} failed:\n{done.stderr[-3000:]}")
        image = next(i for i in json.loads(done.stdout) if i["recipe"] == name)
        per_layer[name] = {"seconds": seconds, "timings": image["timings"] or {}, "image": image}
        print(f"built {name} in {seconds:.1f} s", file=sys.stderr)
    return per_layer


def print_layers(layers: list[str], per_layer: dict[str, dict]) -> None:
    print(f"{'layer':10} {'seconds':>8} {'install':>8} {'normalize':>9} {'load':>6}")
    for name in sorted(layers, key=lambda n: -per_layer[n]["seconds"]):
        t = per_layer[name]["timings"]
        print(f"{name:10} {per_layer[name]['seconds']:8.1f} {t.get('install', 0):8.1f} "
              f"{t.get('normalize', 0):9.1f} {t.get('load', 0):6.1f}")


def image_rows(client: docker.DockerClient, store: Path, graph: Graph, wanted: list[str],
               chains: dict[str, list[str]], per_layer: dict[str, dict], leaves: list[str],
               verify_leaves: bool) -> list[tuple]:
    """One row per wanted image: its size in docker, cold build time and (for a leaf) verify result."""
    rows = []
    for name in wanted:
        image = per_layer[name]["image"]
        size = client.images.get(image["image_id"]).attrs["Size"]
        cold = sum(per_layer[n]["seconds"] for n in chains[name])
        verify = ""
        if verify_leaves and name in leaves:
            vs, done = bs(store, "build", "--verify", name)
            verify = f"{'equal' if done.returncode == 0 else 'DIFFERS'} ({vs:.0f} s)"
        rows.append((name, graph.recipes[name].description, len(chains[name]), size, cold, verify,
                     image["image_id"], image["manifest_digest"]))
    return rows


def print_images(rows: list[tuple], unlockable: dict[str, str], markdown: bool) -> None:
    print()
    print(f"{'image':9} {'layers':>6} {'size':>8} {'cold build':>10}  verify            image id")
    for name, _, n, size, cold, verify, image_id, _ in rows:
        print(f"{name:9} {n:6} {size / 1e9:7.2f}G {cold:9.0f}s  {verify:17} {image_id[:19]}")
    for name, reason in unlockable.items():
        print(f"{name:9} not lockable here: {reason}")
    if markdown:
        print("\n| image | what it holds | layers | size | cold build |\n|---|---|---|---|---|")
        for name, desc, n, size, cold, *_ in rows:
            print(f"| `{name}` | {desc} | {n} | {size / 1e9:.2f} GB | {cold / 60:.1f} min |")


def main() -> None:
    args = parse_args()
    graph = build_graph(load_recipes(ROOT))
    lockable, unlockable = lockability(graph)
    wanted = args.recipes or lockable
    chains = {name: graph.chain(name) for name in wanted}
    layers = [n for n in graph.order if any(n in c for c in chains.values())]
    leaves = [n for n in wanted if not any(n != o and n in chains[o] for o in wanted)]

    client = docker.from_env()
    work = Path(tempfile.mkdtemp(prefix="bench-stack-", dir=os.environ.get("BENCH_TMP", "/var/tmp")))
    store = work / "store"
    store.mkdir()
    subprocess.run(["cp", "-al", str(args.store / "vendor"), str(store / "vendor")], check=True)
    try:
        _, first = bs(store, "fetch", *wanted)  # nothing to download when the project store has it all
        if first.returncode != 0:
            sys.exit(f"fetch failed (run `buildsys fetch {' '.join(wanted)}` first):\n{first.stderr}")
        # Cold for docker too: the images these locks make are the ones NAME:latest names after an
        # earlier build of this project; remove them (leaf first; kept when a container uses them).
        for name in reversed(layers):
            with contextlib.suppress(docker.errors.APIError):  # absent or in use: its load is not timed
                client.images.remove(f"{name}:latest", force=False)
        per_layer = build_layers(store, layers)
        print_layers(layers, per_layer)
        rows = image_rows(client, store, graph, wanted, chains, per_layer, leaves, not args.no_verify)
        print_images(rows, unlockable, args.markdown)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
