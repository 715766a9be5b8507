"""Time shipping: layer compression, publish and export of a built image, import's checks, and a chain
from a registry cache.

    .venv/bin/python bench/bench_ship.py --store DIR [--recipe jupyter] \\
        [--chain-project DIR --chain-store DIR]
    .venv/bin/python bench/bench_ship.py --compression-only [--layer FILE | --store DIR]

Compression: buildsys's gzip (libdeflate, 1 and 2 threads) and zstd against
``gzip -6`` and ``zstd -3 -T1`` on the same layer bytes (``--layer``, else the
largest layer blob of ``--store``, else the first 256 MB of a tar of /usr):
MB/s of input and the ratio; then, with a store, publish with gzip and with
none to a loopback registry (seconds, bytes sent).

Then the signing of that published image: sign and verify milliseconds
against one GET of its manifest; with the chain: ``reproduce`` of the
published app (fetch, build from nothing, compare) against the cold build.

``--store`` must hold the image of ``--recipe`` for the current locks (run
``buildsys build jupyter`` first); publish adds the compressed layers to it
(``STORE/compressed``), nothing else in it is changed. A docker-registry
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
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from benchlib import MB, Events, timed  # noqa: E402
from shipenv import docker_registry  # noqa: E402

from buildsys.build.builder import Builder  # noqa: E402
from buildsys.core.store import Store  # noqa: E402
from buildsys.engine import Engine  # noqa: E402
from buildsys.lock import fresh_locks  # noqa: E402
from buildsys.model.graph import Graph, build_graph  # noqa: E402
from buildsys.model.lockfile import Lock  # noqa: E402
from buildsys.model.recipe import load_recipes  # noqa: E402
from buildsys.oci.compress import compress_file, method  # noqa: E402
from buildsys.oci.registry import Registry  # noqa: E402
from buildsys.ship.export import export, import_archive  # noqa: E402
from buildsys.ship.keys import KeySigner, KeyVerifier, generate_keypair, load_private_key, load_public_key  # noqa: E402
from buildsys.ship.publish import publish  # noqa: E402
from buildsys.ship.remote_cache import RemoteCache  # noqa: E402
from buildsys.ship.reproduce import reproduce  # noqa: E402
from buildsys.ship.signing import sign_manifest, verify_manifest  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path)
    ap.add_argument("--project", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--recipe", default="jupyter")
    ap.add_argument("--chain-project", type=Path)
    ap.add_argument("--chain-store", type=Path)
    ap.add_argument("--layer", type=Path, help="the layer tar to compress (default: see above)")
    ap.add_argument("--compression-only", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-compress-") as tmp_s:
        compression(args.layer or largest_layer(args.store) or usr_tar(Path(tmp_s) / "usr.tar"))
    if args.store is None or args.compression_only:
        return
    graph = build_graph(load_recipes(args.project))
    locks = fresh_locks(args.project, graph, [args.recipe])
    store = Store(args.store.resolve())
    with tempfile.TemporaryDirectory(prefix="bench-ship-") as tmp_s:
        tmp = Path(tmp_s)
        with docker_registry(tmp / "registry") as reg:
            publish_compressed(store, graph, locks, args.recipe, reg.host)
            signing(reg.host, f"gz1/{args.recipe}", tmp)
            secs, pub = timed(lambda: publish(store, graph, locks, args.recipe, f"{reg.host}/bench/{args.recipe}:1",
                                              force=True, compression="none"))
            print(f"publish {args.recipe} uncompressed: {secs:.1f}s, {pub.blobs_sent} blobs, "
                  f"{pub.bytes_sent / MB:.0f} MB sent "
                  f"({pub.bytes_sent / MB / secs:.0f} MB/s), digest {pub.manifest_digest}")
            secs, pub = timed(lambda: publish(store, graph, locks, args.recipe, f"{reg.host}/bench/{args.recipe}:1",
                                              force=True, compression="none"))
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


def largest_layer(store: Path | None) -> Path | None:
    """The largest layer blob that a manifest of the store's layout names."""
    if store is None:
        return None
    blobs = store / "oci" / "blobs" / "sha256"
    layers: set[str] = set()
    for path in blobs.iterdir():
        if path.stat().st_size < 1 << 20:
            try:
                doc = json.loads(path.read_bytes())
            except ValueError:
                continue
            if isinstance(doc, dict) and "layers" in doc:
                layers |= {la["digest"][7:] for la in doc["layers"] if la.get("mediaType", "").endswith(".tar")}
    found = sorted((blobs / h for h in layers if (blobs / h).is_file()), key=lambda p: p.stat().st_size)
    return found[-1] if found else None


def usr_tar(dest: Path, cap: int = 256 << 20) -> Path:
    with open(dest, "wb") as out:
        proc = subprocess.Popen(["tar", "-C", "/", "-cf", "-", "usr"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        n = 0
        while n < cap and (chunk := proc.stdout.read(min(1 << 20, cap - n))):
            out.write(chunk)
            n += len(chunk)
        proc.kill()
        proc.wait()
    return dest


def compression(layer: Path) -> None:
    size = layer.stat().st_size
    print(f"compression of {layer} ({size / MB:.0f} MB), {os.cpu_count()} CPUs; MB/s of input")
    rows: list[tuple[str, float, int]] = []
    for fmt, threads in (("gzip", 1), ("gzip", 2), ("zstd", 1)):
        with open(os.devnull, "wb") as null:
            started = time.perf_counter()
            got = compress_file(method(fmt), layer, null, threads=threads)
            secs = time.perf_counter() - started
        rows.append((f"buildsys {method(fmt).describe()}, {threads} thread(s)", secs, got.size))
    for cmd in (["gzip", "-6", "-c"], ["zstd", "-3", "-T1", "-c", "-q"]):
        with open(layer, "rb") as src:
            n = 0
            started = time.perf_counter()
            proc = subprocess.Popen(cmd, stdin=src, stdout=subprocess.PIPE)
            assert proc.stdout is not None
            while chunk := proc.stdout.read(1 << 20):
                n += len(chunk)
            proc.wait()
            rows.append((" ".join(cmd[:2]) + " (command line)", time.perf_counter() - started, n))
    for what, secs, out in rows:
        print(f"  {what}: {size / MB / secs:.0f} MB/s, {out / MB:.1f} MB, ratio {size / out:.2f}")


def publish_compressed(store: Store, graph: Graph, locks: Mapping[str, Lock], recipe: str, host: str) -> None:
    """Publish with gzip (compressing what the store has not compressed yet), then to another repository
    (compressed already: push only)."""
    for label, repo in (("first", "gz1"), ("to another repository", "gz2")):
        started = time.perf_counter()
        pub = publish(store, graph, locks, recipe, f"{host}/{repo}/{recipe}:1", force=True)
        secs = time.perf_counter() - started
        print(f"publish {recipe} gzip {label}: {secs:.1f}s, {pub.layers_compressed} layer(s) compressed, "
              f"{pub.bytes_sent / MB:.0f} MB sent for {pub.layer_bytes / MB:.0f} MB of layers "
              f"({pub.shipped_layer_bytes / pub.layer_bytes:.0%})")


def signing(host: str, repo: str, tmp: Path, runs: int = 6) -> None:
    """Milliseconds to sign and verify the image published to ``repo``, against its peer in the same process:
    one GET of the image's manifest from the same registry (the round trip every signing step makes)."""
    reg = Registry(host)
    digest = reg.get_manifest(repo, "1")[2]
    generate_keypair(tmp / "bench", b"bench passphrase")
    signer = KeySigner(load_private_key(tmp / "bench.key", b"bench passphrase"))
    verifier = KeyVerifier(load_public_key(tmp / "bench.pub"))

    def median(work: Callable[[], object]) -> float:
        times = sorted(timed(work)[0] for _ in range(runs))
        return times[len(times) // 2] * 1000

    peer = median(lambda: reg.get_manifest(repo, digest))
    sign_first = timed(lambda: sign_manifest(reg, repo, digest, signer))[0] * 1000
    sign_again = median(lambda: sign_manifest(reg, repo, digest, signer))
    verify = median(lambda: verify_manifest(reg, repo, digest, verifier))
    print(f"sign (first) {sign_first:.0f} ms, sign again (nothing new) {sign_again:.0f} ms, verify {verify:.0f} ms; "
          f"peer GET manifest {peer:.1f} ms: verify = {verify / peer:.1f}x the GET")


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
    ref = publish(store, graph, locks, "app", f"{host}/bench/app:1", force=True).reference
    elsewhere = Store(tmp / "reproduce")  # a machine with the project only: fetches, then rebuilds
    secs_repro, result = timed(lambda: reproduce(project, elsewhere, graph, ref, engine=engine,
                                                 locks_for=lambda r: locks))
    print(f"reproduce {ref} (fetch + build from nothing + compare): {secs_repro:.1f}s "
          f"({secs_repro / secs_cold:.2f}x the cold build), equal: {result.equal}, {result.seconds}")


if __name__ == "__main__":
    main()
