"""The GPU images at the speed of their bytes: what buildsys adds to a big layer, and what a small change costs.

For each recipe named (default: pytorch), in a new store holding only hard links
to the project store's vendored files:

1. cold build of the recipe on its cached parents (their images built first, not
   timed): install, normalize and load seconds, the ratio (normalize + load) /
   install, and the recipe's OCI layers (a big pip set is split: docs/recipes.md);
2. peers over the same bytes, in this process: ``sha256sum`` of the recipe's
   layer blobs against the normalizer's MB/s, and ``docker commit`` of a
   container that ran the same steps (the engine making its own layer of it);
3. ``publish`` (gzip) to a loopback docker-registry: seconds and bytes sent;
4. a one-package change: a copy of the project whose recipe asks one more small
   distribution (``--change``, default ``toolz``), locked (pins kept), fetched,
   built and published again to the same repository: seconds, which layers
   changed, bytes rebuilt and bytes sent, as a share of the image;
5. a cold ``build --no-load`` on the same parents (nothing goes to docker: what
   publish, export and CI's cache jobs need), then that image loaded alone from
   the store into a docker lacking it: docker's own cost, with no tool above it.

    .venv/bin/python bench/bench_gpu.py                  # pytorch
    .venv/bin/python bench/bench_gpu.py keras pytorch

Needs PyPI (the change's lock and fetch; the first ``fetch`` of the recipe
downloads its wheels, ~3 GB each) and docker; uses ~25 GB of disk per recipe
under $BENCH_TMP (default /var/tmp). Not part of ``make bench``.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import tomlkit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchlib import MB  # noqa: E402
from shipenv import docker_registry  # noqa: E402

from buildsys.build.builder import Builder  # noqa: E402
from buildsys.core.store import Store  # noqa: E402
from buildsys.engine import Engine  # noqa: E402
from buildsys.lock import fresh_locks  # noqa: E402
from buildsys.model.graph import build_graph  # noqa: E402
from buildsys.model.recipe import load_recipes  # noqa: E402
from buildsys.oci.image import OciLayout, write_docker_archive  # noqa: E402


def bs(project: Path, store: Path, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "buildsys", "-C", str(project), "--store", str(store), *args],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"buildsys {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return time.monotonic() - started, done


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipes", nargs="*", default=["pytorch"])
    ap.add_argument("--store", type=Path, default=ROOT / ".buildsys", help="the project store (its vendor/)")
    ap.add_argument("--change", default="toolz", help="the small distribution the change adds")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--no-peer", action="store_true", help="skip the peer run with split = false (one layer)")
    return ap.parse_args()


def forget(client: docker.DockerClient, name: str) -> None:
    """Remove every image of recipe ``name`` that docker holds, tagged or not (an earlier run's cold image is
    left untagged by its one-package change): a cold build that found its layers in docker would skip unpacking
    them, and its load time would be a cache hit's."""
    found = client.images.list(all=True, filters={"label": f"org.opencontainers.image.title={name}"})
    for image in found:
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(image.id, force=True)
    if found:
        print(f"  (docker held {len(found)} image(s) of {name}: removed)")


def own_layers(store: Path, name: str, parent: str | None) -> list[dict[str, Any]]:
    """The recipe's own layers in the store's image: digest, size, history name."""
    layout = OciLayout(store / "oci")
    digest = layout.resolve(name)
    assert digest is not None
    manifest, config = layout.read_image(digest)
    below = parent_layers(layout, parent)
    made = [h["created_by"] for h in config["history"] if not h.get("empty_layer")]
    return [{"digest": d["digest"], "size": int(d["size"]),
             "name": made[i].removeprefix("buildsys: ").partition(" (")[0]}
            for i, d in enumerate(manifest["layers"]) if i >= below]


def parent_layers(layout: OciLayout, parent: str | None) -> int:
    """How many layers the image the store names ``parent`` has (0 for none)."""
    if parent is None:
        return 0
    digest = layout.resolve(parent)
    assert digest is not None
    return len(layout.read_image(digest)[0]["layers"])


def sha256sum_seconds(store: Path, layers: list[dict[str, Any]]) -> float:
    files = [str(store / "oci" / "blobs" / "sha256" / x["digest"][7:]) for x in layers]
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)  # the same page cache for both
    started = time.monotonic()
    subprocess.run(["sha256sum", *files], stdout=subprocess.DEVNULL, check=True)
    return time.monotonic() - started


def commit_seconds(project: Path, store: Path, name: str) -> tuple[float, float]:
    """(install, commit) seconds: the recipe's steps in a container of its parent, then ``docker commit``."""
    graph = build_graph(load_recipes(project))
    locks = fresh_locks(project, graph, [name])
    builder = Builder(Store(store), graph, locks, connect=Engine.connect)
    parent_chain = builder.stored_chain(graph.recipes[name].parents[0])
    assert parent_chain is not None
    started = time.monotonic()
    with builder.run_steps(graph.recipes[name], locks[name], parent_chain[-1]) as (container, _, _):
        ran = time.monotonic()
        image = container.commit()
        committed = time.monotonic()
    with contextlib.suppress(docker.errors.APIError):
        docker.from_env().images.remove(image, force=True)
    return ran - started, committed - ran


def publish(store: Path, project: Path, name: str, host: str, label: str) -> dict[str, Any]:
    repo = f"bench/{name}-{label.split()[0]}"
    seconds, done = bs(project, store, "publish", name, "--to", f"{host}/{repo}:1", "--json", "--force")
    out: dict[str, Any] = json.loads(done.stdout)
    out["wall"] = seconds
    return out


def project_copy(src: Path, dest: Path, name: str, change: Callable[[Any], None]) -> Path:
    """A copy of ``src``'s recipes and locks whose recipe ``name`` ``change`` edits (its TOML document)."""
    for part in ("recipes", "locks"):
        shutil.copytree(src / part, dest / part)
    path = dest / "recipes" / f"{name}.toml"
    doc = tomlkit.parse(path.read_text())
    change(doc)
    path.write_text(tomlkit.dumps(doc))
    return dest


def bench(name: str, args: argparse.Namespace, work: Path, client: docker.DockerClient, host: str,
          project: Path, label: str) -> dict[str, float]:
    graph = build_graph(load_recipes(project))
    parent = graph.recipes[name].parents[0]
    print(f"\n== {name} ({label})")
    store = work / f"store-{name}-{label.split()[0]}"
    store.mkdir()
    subprocess.run(["cp", "-al", str(args.store / "vendor"), str(store / "vendor")], check=True)
    for p in graph.chain(name)[:-1]:
        bs(project, store, "build", p)
    unloaded = work / f"store-{name}-{label.split()[0]}-no-load"  # the same parents, for a build never loaded
    subprocess.run(["cp", "-al", str(store), str(unloaded)], check=True)
    forget(client, name)
    seconds, done = bs(project, store, "build", "--json", name)
    image = next(i for i in json.loads(done.stdout) if i["recipe"] == name)
    t = image["timings"]
    layers = own_layers(store, name, parent)
    total = sum(x["size"] for x in layers)
    print(f"cold build {seconds:.1f} s: install {t['install']:.1f}, normalize {t['normalize']:.1f}, load "
          f"{t['load']:.1f}, cleanup (docker removing the build container) {t.get('cleanup', 0):.1f}; "
          f"(normalize + load) / install = {(t['normalize'] + t['load']) / t['install']:.2f}")
    for x in layers:
        print(f"  layer {x['name']:22} {x['size'] / MB:8.0f} MB  {x['digest'][:19]}")
    t_sum = sha256sum_seconds(store, layers)
    print(f"normalizer {total / MB / t['normalize']:.0f} MB/s (write+hash+stream) vs sha256sum {total / MB / t_sum:.0f}"
          f" MB/s over the same {total / MB:.0f} MB: ratio {t['normalize'] / t_sum:.2f}")
    install, commit = commit_seconds(project, store, name)
    print(f"docker commit of the same steps' container: {commit:.1f} s (its install {install:.1f} s); buildsys "
          f"normalize + load {t['normalize'] + t['load']:.1f} s: ratio {(t['normalize'] + t['load']) / commit:.2f}")
    first = publish(store, project, name, host, label)
    print(f"publish gzip: {first['wall']:.1f} s, {first['bytes_sent'] / MB:.0f} MB sent of "
          f"{first['layer_bytes'] / MB:.0f} MB of layers")

    proj = project_copy(project, work / f"changed-{name}-{label.split()[0]}", name,
                        lambda doc: doc["pip"]["packages"].append(args.change))
    t_lock, _ = bs(proj, store, "lock", name)
    t_fetch2, _ = bs(proj, store, "fetch", name)
    seconds2, done2 = bs(proj, store, "build", "--json", name)
    t2 = next(i for i in json.loads(done2.stdout) if i["recipe"] == name)["timings"]
    after = own_layers(store, name, parent)
    before = {x["digest"] for x in layers}
    new = [x for x in after if x["digest"] not in before]
    rebuilt = sum(x["size"] for x in new)
    again = publish(store, proj, name, host, label)
    print(f"one more package ({args.change}): lock {t_lock:.1f} s, fetch {t_fetch2:.1f} s, build {seconds2:.1f} s "
          f"(install {t2['install']:.1f}, normalize {t2['normalize']:.1f}, load {t2['load']:.1f}, "
          f"cleanup {t2.get('cleanup', 0):.1f})")
    print(f"  new layers: {', '.join(x['name'] for x in new) or 'none'}: {rebuilt / MB:.0f} MB of "
          f"{sum(x['size'] for x in after) / MB:.0f} MB ({rebuilt / max(1, sum(x['size'] for x in after)):.1%})")
    print(f"  publish again: {again['wall']:.1f} s, {again['bytes_sent'] / MB:.1f} MB sent of "
          f"{again['shipped_layer_bytes'] / MB:.0f} MB shipped "
          f"({again['bytes_sent'] / again['shipped_layer_bytes']:.1%})")
    t3, alone = no_load(project, unloaded, name, client)
    print(f"cold build --no-load: install {t3['install']:.1f}, normalize {t3['normalize']:.1f}: normalize / "
          f"install = {t3['normalize'] / t3['install']:.2f}; then docker load of those layers alone (one archive "
          f"from the store, docker lacking them): {alone:.1f} s = {alone / t3['install']:.2f} x install")
    forget(client, name)  # the next run starts cold
    shutil.rmtree(store, ignore_errors=True)  # GBs: the peer's store would come on top
    shutil.rmtree(unloaded, ignore_errors=True)
    return {"cold (normalize+load)/install": (t["normalize"] + t["load"]) / t["install"],
            "cold normalize+load s": t["normalize"] + t["load"], "docker commit s": commit,
            "change build s": seconds2, "change rebuilt MB": rebuilt / MB,
            "change pushed MB": again["bytes_sent"] / MB,
            "change (normalize+load)/install": (t2["normalize"] + t2["load"]) / t2["install"],
            "cold --no-load normalize/install": t3["normalize"] / t3["install"],
            "docker load alone / install": alone / t3["install"]}


def no_load(project: Path, store: Path, name: str, client: docker.DockerClient) -> tuple[dict[str, float], float]:
    """A cold ``build --no-load`` (what publish and export need: nothing goes to docker), then that image loaded
    by itself into a docker lacking it (the store's layers in one streamed archive, the parent's left out): what
    docker's load costs with no tool above it."""
    _, done = bs(project, store, "build", "--json", "--no-load", name)
    image = next(i for i in json.loads(done.stdout) if i["recipe"] == name)
    layout = OciLayout(store / "oci")  # --no-load names nothing in the store: the image by its digests
    below = parent_layers(layout, build_graph(load_recipes(project)).recipes[name].parents[0])
    forget(client, name)  # the cold build loaded the same layers
    engine = Engine.connect()
    started = time.monotonic()
    engine.load_stream(lambda sink: write_docker_archive(layout, image["manifest_digest"], [], sink,
                                                         omit_layers=below))
    return image["timings"], time.monotonic() - started


def main() -> None:
    args = parse_args()
    client = docker.from_env()
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-", dir=os.environ.get("BENCH_TMP", "/var/tmp")))
    try:
        with docker_registry(work / "registry") as reg:
            for name in args.recipes:
                t_fetch, _ = bs(ROOT, args.store, "fetch", name)
                print(f"\n{name}: fetch into the project store {t_fetch:.1f} s")
                split = bench(name, args, work, client, reg.host, ROOT, "split")
                if args.no_peer:
                    continue
                # The peer: the same recipe as one layer (what buildsys built before split layers).
                one = project_copy(ROOT, work / f"one-{name}", name, lambda doc: doc["pip"].add("split", False))
                bs(one, args.store, "lock", name)  # the recipe changed; its pins are kept
                single = bench(name, args, work, client, reg.host, one, "one layer (split = false)")
                print(f"\n{name}: split vs one layer")
                for key, value in split.items():
                    print(f"  {key:34} {value:9.2f} {single[key]:9.2f}  ratio {value / max(single[key], 1e-9):.2f}")
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
