"""Time a three-level chain (root -> tools -> app) end to end, in one process, against ``docker build``.

The chain is the fixture ``tests/fixtures/chain``: a bookworm minbase root;
``tools`` adds jq and python3 from Debian and six and markupsafe from PyPI;
``app`` runs ``useradd`` and an ``echo`` and sets the image config. The script
locks and fetches it, then times a cold build (per layer), no-op rebuilds, an
incremental rebuild of the leaf after a change to ``recipes/app.toml`` (the
file and its lock are restored afterwards), ``build --verify`` on a warm cache,
and the same chain written as a Dockerfile and built by ``docker build`` from
the root image buildsys made (cold, cached, and a second cold build to see
whether docker gives the same image twice). It prints figures and asserts
little: it is for seeing where the time goes.

    .venv/bin/python bench/bench_chain.py                 # throw-away project and store
    .venv/bin/python bench/bench_chain.py --store /tmp/s  # keep the vendored files for the next run

Builds tag ``root:latest``, ``tools:latest`` and ``app:latest`` in docker, as
``buildsys build app`` does. The images ``docker build`` made are removed at
the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import tomlkit
from benchlib import MB, Events, timed
from rich.console import Console
from rich.table import Table

from buildsys.build.builder import Builder
from buildsys.build.records import BuiltImage, LayerRecord
from buildsys.build.verify import format_mismatch, verify
from buildsys.core.store import Store
from buildsys.ecosystems import artifacts
from buildsys.ecosystems.apt_sections import AptRecipe, AptSection
from buildsys.ecosystems.debian_root import DebianBaseLock
from buildsys.ecosystems.files import FilesRecipe
from buildsys.ecosystems.pip import PipSection
from buildsys.ecosystems.pip_resolve import PipRecipe
from buildsys.ecosystems.pip_tools import host_ca_bundle
from buildsys.engine import Engine
from buildsys.fetch.vendor import FetchReport, fetch
from buildsys.lock import LockOutcome, fresh_locks, lock_recipes
from buildsys.model.graph import Graph, build_graph
from buildsys.model.lockfile import Lock, lock_path
from buildsys.model.recipe import Recipe, load_recipes

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "chain"
LEAF = "app"
# The change made to the leaf. The nonce makes it one this store has never built (a store reused with --store
# would otherwise answer it from the cache, as a content-keyed cache should).
EXTRA_STEP = "echo v2 {nonce} > /v2.txt"
DOCKER_TAG = "buildsys-bench-dockerfile"
CA_FILE = "host-ca.crt"  # in the docker build context and, while pip runs, in the image's /tmp
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")

console = Console(highlight=False, width=120)


class TaggingBuilder(Builder):
    """A Builder that also reports when an image is in docker and tagged (``Builder`` says only when it loads).

    That marks where one layer of the chain really ends, so the time above the
    root can be told apart from the root's.
    """

    def load(self, record: LayerRecord, tag: str | None = None) -> None:
        super().load(record, tag)
        if tag:
            self.progress(record.recipe, "tagged", f"{tag}:latest")


def yes_no(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]no[/]"


# -- the project -----------------------------------------------------------------------


def prepare_project(project: Path) -> None:
    """Copy the fixture's recipes into ``project`` unless it has recipes already."""
    recipes = project / "recipes"
    if not recipes.is_dir():
        shutil.copytree(FIXTURE / "recipes", recipes)


def load_graph(project: Path) -> Graph:
    return build_graph(load_recipes(project))


def _resolving(store: Store, graph: Graph) -> dict[str, Any]:
    """What ``lock`` needs to resolve inside parent images: a Builder over the locks so far, and fetch."""
    return {"parent_images": lambda locks: Builder(store, graph, locks, engine=Engine.connect(), tag=False),
            "vendor": lambda arts: fetch(store, arts, progress=False)}


def lock_and_fetch(project: Path, store: Store, graph: Graph, names: Sequence[str],
                   ) -> tuple[float, list[LockOutcome], dict[str, Lock], FetchReport]:
    lock_s, outcomes = timed(lambda: lock_recipes(project, store, graph, names, **_resolving(store, graph)))
    locks = fresh_locks(project, graph, names)
    arts = sorted({a.sha256: a for lk in locks.values() for a in artifacts(lk)}.values(),
                       key=lambda a: (a.kind, a.filename))
    return lock_s, outcomes, locks, fetch(store, arts, progress=False)


def add_run_step(recipe_file: Path, step: str) -> None:
    """Append ``step`` to the recipe's ``run`` list (tomlkit keeps the rest of the file as it is)."""
    doc = tomlkit.parse(recipe_file.read_text())
    run = [str(s) for s in doc.get("run", [])]
    doc["run"] = [*run, step]
    recipe_file.write_text(tomlkit.dumps(doc))


# -- printing the Builder's events -------------------------------------------------------------------


def print_timeline(events: Events, end: float, indent: str = "    ") -> None:
    """Every event with its offset from the start and the time until the next one."""
    marks = [(events.t0, "-", "start", "check vendored inputs (sha256)"), *events.seen]
    for i, (t, recipe, stage, detail) in enumerate(marks):
        stop = marks[i + 1][0] if i + 1 < len(marks) else end
        console.print(f"{indent}{t - events.t0:7.2f} s  {stop - t:7.2f} s  {recipe:<6} {stage:<10} {detail[:70]}")


# -- the same chain as a Dockerfile ----------------------------------------------------------------


def dockerfile(graph: Graph, chain: Sequence[str], base_id: str, with_ca: bool) -> str:
    """The chain above its root as a Dockerfile, ``FROM`` the root image buildsys built (by image id).

    apt packages install from the network in one RUN per recipe (plus python3-pip
    where the recipe has pip packages: buildsys brings its own pinned pip and
    installs no python3-pip); pip packages in one RUN (with the host's CA bundle
    when ``with_ca``); each recipe's run steps in one RUN; then the recipe's
    image config.
    """
    lines = [f"FROM {base_id}"]
    for name in chain[1:]:
        r: Recipe = graph.recipes[name]
        if r.section(FilesRecipe).files:
            raise SystemExit(f"{name}: [[files]] has no Dockerfile counterpart in this benchmark")
        pips = r.section(PipRecipe).packages
        apt = list(dict.fromkeys([*r.section(AptRecipe).packages, *(["python3-pip"] if pips else [])]))
        if apt:
            lines.append("RUN apt-get update && apt-get install -y --no-install-recommends "
                         f"{' '.join(apt)} && rm -rf /var/lib/apt/lists/*")
        if pips:
            pip = f"pip install --break-system-packages {' '.join(shlex.quote(p) for p in pips)}"
            if with_ca:
                lines += [f"COPY {CA_FILE} /tmp/{CA_FILE}", f"RUN PIP_CERT=/tmp/{CA_FILE} {pip} && rm /tmp/{CA_FILE}"]
            else:
                lines.append(f"RUN {pip}")
        if r.run:
            lines.append(f"RUN {' && '.join(r.run)}")
        img = r.image
        lines += [f"ENV {k}={json.dumps(v)}" for k, v in img.env]
        if img.user is not None:
            lines.append(f"USER {img.user}")
        if img.workdir is not None:
            lines.append(f"WORKDIR {img.workdir}")
        if img.expose:
            lines.append(f"EXPOSE {' '.join(str(p) for p in img.expose)}")
        if img.entrypoint is not None:
            lines.append(f"ENTRYPOINT {json.dumps(list(img.entrypoint))}")
        if img.cmd is not None:
            lines.append(f"CMD {json.dumps(list(img.cmd))}")
    return "\n".join(lines) + "\n"


@dataclass
class DockerBuild:
    image_id: str
    seconds: float
    steps: list[tuple[str, float]]  # ("Step 2/9 : RUN ...", seconds)


def docker_build(engine: Engine, context: Path, base_id: str, *, nocache: bool) -> DockerBuild:
    """``docker build`` through the low-level API (the classic builder), streamed, timed per step.

    On a failure the images of the steps that succeeded are removed (never ``base_id``).
    """
    api: Any = engine.client.api
    started = time.monotonic()
    marks: list[tuple[str, float]] = []
    image_id: str | None = None
    tail: list[str] = []
    proxies = {k: v for k in PROXY_VARS if (v := os.environ.get(k))}  # build args docker keeps out of the image
    stream: Iterator[Mapping[str, Any]] = api.build(path=str(context), nocache=nocache, rm=True, forcerm=True,
                                                    tag=DOCKER_TAG, buildargs=proxies, decode=True)
    for chunk in stream:
        if "error" in chunk:
            # the steps that succeeded left untagged images; removing the last takes its untagged parents along
            made = [m.group(1) for t in tail if (m := re.match(r" ---> ([0-9a-f]{12})$", t.strip("\n")))
                    and not base_id.startswith(f"sha256:{m.group(1)}")]
            if made:
                engine.remove_image(made[-1])
            raise RuntimeError(f"docker build failed: {chunk['error']}\n" + "".join(tail[-30:]))
        text = chunk.get("stream", "")
        if text:
            tail.append(text)
            if text.startswith("Step "):
                marks.append((text.strip(), time.monotonic()))
        aux = chunk.get("aux")
        if isinstance(aux, dict) and "ID" in aux:
            image_id = aux["ID"]
    end = time.monotonic()
    if image_id is None:
        image_id = engine.image_id(f"{DOCKER_TAG}:latest")
    assert image_id, "docker build reported no image"
    steps = [(label, (marks[i + 1][1] if i + 1 < len(marks) else end) - t) for i, (label, t) in enumerate(marks)]
    return DockerBuild(image_id=image_id, seconds=end - started, steps=steps)


def print_steps(build: DockerBuild, indent: str = "    ") -> None:
    for label, seconds in build.steps:
        console.print(f"{indent}{seconds:7.2f} s  {label[:100]}")


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", type=Path, help="project folder to use (the fixture's recipes are copied in if it "
                   "has no recipes/); default: a throw-away one")
    p.add_argument("--store", type=Path, help="store folder to use (kept); default: a throw-away one")
    p.add_argument("--keep", action="store_true", help="keep the throw-away folder and print where it is")
    p.add_argument("--rebuilds", type=int, default=5, help="no-op rebuilds (and cached docker builds) to time "
                   "(default 5)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="buildsys-bench-chain-"))
    store = Store((args.store or work / "store").resolve())
    try:
        return run(args, work, store)
    finally:
        if args.keep:
            console.print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path, store: Store) -> int:
    project = (args.project or work / "project").resolve()
    prepare_project(project)
    console.print(f"project {project}\nstore   {store.root}")
    graph = load_graph(project)
    chain = graph.chain(LEAF)
    root = chain[0]

    # 1. lock and fetch
    lock_s, outcomes, locks, fetched = lock_and_fetch(project, store, graph, [LEAF])
    status = ", ".join(f"{o.recipe}: {o.status}" for o in outcomes)
    root_base = locks[root].get(DebianBaseLock)
    assert root_base is not None
    n_debs = len(root_base.packages) + sum(len(locks[n].section(AptSection).debs) for n in chain[1:])
    n_wheels = sum(len(locks[n].section(PipSection).packages) for n in chain)
    resolved = any(o.status != "fresh" for o in outcomes)
    note = f"; pip is resolved inside a build of the parent chain, so this includes building {root}" \
        if resolved else ""
    console.print(f"lock            {lock_s:8.2f} s  ({status}{note})")
    console.print(f"fetch           {fetched.seconds:8.2f} s  ({fetched.downloaded} downloaded, "
                  f"{fetched.bytes / MB:.1f} MB, {fetched.skipped} already in the store; {n_debs} .debs and "
                  f"{n_wheels} wheels locked)")

    # 2. cold build of the whole chain
    connect_s, engine = timed(Engine.connect)
    console.print(f"engine connect  {connect_s:8.3f} s")
    events = Events()
    cold = TaggingBuilder(store, graph, locks, engine=engine, no_cache=True,
                          progress=events).build([LEAF])[0]
    cold_end = time.monotonic()
    cold_s = cold_end - events.t0
    root_done = events.at(root, "tagged")
    above_root_s = cold_end - root_done if root_done is not None else float("nan")
    console.print(f"cold build      {cold_s:8.2f} s  (cached={cold.cached}, image {cold.record.config_digest[:19]}; "
                  f"{' -> '.join(chain)})")
    per_layer = events.built_seconds()
    for name in chain:
        console.print(f"  {name:<6} built in {per_layer.get(name, float('nan')):7.1f} s")
    console.print(f"  above {root} (from {root}:latest tagged to the end) {above_root_s:7.2f} s")
    console.print("  timeline (offset, time until the next event, recipe, stage):")
    print_timeline(events, cold_end)

    # 3. no-op rebuilds: a new Builder each time, as a new `buildsys build` would make
    noop: list[float] = []
    all_cached = True
    for _ in range(args.rebuilds):
        seconds, images = timed(lambda: Builder(store, graph, locks, engine=engine).build([LEAF]))
        all_cached &= images[0].cached and images[0].record == cold.record
        noop.append(seconds)
    noop_med = statistics.median(noop)
    console.print(f"no-op rebuild   {noop_med * 1e3:8.1f} ms median, {min(noop) * 1e3:.1f} ms min over {len(noop)} "
                  f"(cached={all_cached})")
    if not all_cached:
        console.print("[red]a no-op rebuild was not served from the cache (or gave another image)[/]")

    # 4. incremental: change the leaf, relock only it, rebuild
    incr_s, incr_ok, relock_s, incr_image = incremental(project, store, engine, chain, cold)
    graph = load_graph(project)  # the restored recipes (the same as before the change)
    locks = fresh_locks(project, graph, [LEAF])

    # 5. --verify on a warm cache: a cached build, then every layer again from nothing
    vevents = Events()
    verify_s, results = timed(lambda: verify(store, graph, locks, [LEAF], engine, vevents))
    result = results[0]
    verified = result.equal
    same_as_cold = result.second.record == cold.record and result.first.record == cold.record
    console.print(f"verify          {verify_s:8.2f} s  (equal={verified}, rebuilt image = cold build's: "
                  f"{same_as_cold}; first pass cached={result.first.cached}); verify/cold build "
                  f"{verify_s / cold_s:.2f}")
    if not verified:
        console.print(f"[red]{format_mismatch(result) if result.mismatch else 'the manifests differ'}[/]")

    drop_untagged(engine, incr_image)

    # 6. the same chain as a Dockerfile, built by docker from the same root image
    d = docker_comparison(engine, graph, chain, cold, work, args.rebuilds)

    console.print(f"buildsys / docker: cold {cold_s / d.cold.seconds:.2f} (all layers), "
                  f"{above_root_s / d.cold.seconds:.2f} (above {root}, where docker starts); "
                  f"no-op {noop_med / d.cached_med:.2f}")

    # 7. summary
    buildsys_repro = verified and same_as_cold
    table = Table(title=f"chain {' -> '.join(chain)}: buildsys vs docker build (classic builder, network on)",
                  title_justify="left")
    for col in ("", "buildsys", "docker build", "buildsys / docker"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row(f"cold build s (buildsys: all {len(chain)} layers)", f"{cold_s:.2f}", f"{d.cold.seconds:.2f}",
                  f"{cold_s / d.cold.seconds:.2f}")
    table.add_row(f"cold build s above {root} (docker starts from it)", f"{above_root_s:.2f}",
                  f"{d.cold.seconds:.2f}", f"{above_root_s / d.cold.seconds:.2f}")
    table.add_row("no-op rebuild s (median)", f"{noop_med:.4f}", f"{d.cached_med:.4f}",
                  f"{noop_med / d.cached_med:.2f}")
    table.add_row(f"incremental {LEAF} s (relock {relock_s:.2f} s not included)", f"{incr_s:.2f}", "", "")
    table.add_row("verify s (verify / cold build)", f"{verify_s:.2f} ({verify_s / cold_s:.2f})", "", "")
    table.add_row("reproducible (same image from two cold builds)", yes_no(buildsys_repro),
                  yes_no(d.cold.image_id == d.again.image_id), "")
    console.print(table)
    ok = all_cached and incr_ok and buildsys_repro
    return 0 if ok else 1


def incremental(project: Path, store: Store, engine: Engine, chain: Sequence[str], cold: BuiltImage,
                ) -> tuple[float, bool, float, str]:
    """Add a run step to the leaf, relock only the leaf, rebuild; restore the recipe and its lock."""
    recipe_file = project / "recipes" / f"{LEAF}.toml"
    lock_file = lock_path(project, LEAF)
    saved_recipe, saved_lock = recipe_file.read_bytes(), lock_file.read_bytes()
    step = EXTRA_STEP.format(nonce=f"{time.time_ns():x}")
    try:
        add_run_step(recipe_file, step)
        graph = load_graph(project)
        relock_s, outcomes = timed(lambda: lock_recipes(project, store, graph, [LEAF], **_resolving(store, graph)))
        status = ", ".join(f"{o.recipe}: {o.status}" for o in outcomes)
        locks = fresh_locks(project, graph, [LEAF])
        events = Events()
        image = Builder(store, graph, locks, engine=engine, progress=events).build([LEAF])[0]
        incr_s = time.monotonic() - events.t0
    finally:
        recipe_file.write_bytes(saved_recipe)
        lock_file.write_bytes(saved_lock)
    ancestors_cached = all(events.stages(n) == ["cached"] for n in chain[:-1])
    leaf_built = "built" in events.stages(LEAF) and "cached" not in events.stages(LEAF)
    changed = image.record != cold.record and image.layers[:-1] == cold.layers[:-1]
    ok = ancestors_cached and leaf_built and changed
    console.print(f"relock {LEAF}      {relock_s:8.2f} s  ({status})")
    seen = ", ".join(f"{n}: {'/'.join(events.stages(n)) or '-'}" for n in chain)
    console.print(f"incremental     {incr_s:8.2f} s  (added run step '{step}' to {LEAF}; {seen}; "
                  f"ancestors cached: {ancestors_cached}, only {LEAF} built: {leaf_built}, "
                  f"new image {image.record.config_digest[:19]})")
    print_timeline(events, events.t0 + incr_s)
    if not ancestors_cached:
        console.print("[red]an ancestor of the changed leaf was rebuilt (it should be a cache hit)[/]")
    if not leaf_built:
        console.print(f"[red]the changed {LEAF} was not built (a cache hit: was this change built before?)[/]")
    if not changed:
        console.print(f"[red]the changed {LEAF} gave the cold build's image, or other ancestors[/]")
    console.print(f"  restored {recipe_file.relative_to(project)} and {lock_file.relative_to(project)}")
    return incr_s, ok, relock_s, image.record.config_digest


def drop_untagged(engine: Engine, image_id: str) -> None:
    """Remove the changed leaf's image from docker once nothing tags it (verify re-tagged the leaf)."""
    try:
        image = engine.client.images.get(image_id)
    except docker.errors.ImageNotFound:
        return
    if not image.tags:
        engine.remove_image(image_id)


@dataclass
class DockerFigures:
    cold: DockerBuild
    again: DockerBuild  # a second nocache build
    cached_med: float


def docker_comparison(engine: Engine, graph: Graph, chain: Sequence[str], cold: BuiltImage, work: Path,
                      rebuilds: int) -> DockerFigures:
    root_id = cold.layers[0].config_digest
    tagged = engine.image_id(f"{chain[0]}:latest")
    if tagged != root_id:
        console.print(f"[yellow]{chain[0]}:latest is {tagged}, not the cold build's {root_id}; using the latter[/]")
    context = work / "dockerfile"
    context.mkdir(exist_ok=True)
    ca = host_ca_bundle()
    if ca is not None:
        shutil.copyfile(ca, context / CA_FILE)
    text = dockerfile(graph, chain, root_id, with_ca=ca is not None)
    (context / "Dockerfile").write_text(text)
    console.print("Dockerfile:\n" + "\n".join(f"    {line}" for line in text.splitlines()))
    made: list[str] = []
    try:
        first = docker_build(engine, context, root_id, nocache=True)
        made.append(first.image_id)
        console.print(f"docker cold     {first.seconds:8.2f} s  (nocache, image {first.image_id[:19]})")
        print_steps(first)
        cached = []
        for _ in range(rebuilds):
            b = docker_build(engine, context, root_id, nocache=False)
            made.append(b.image_id)
            cached.append(b.seconds)
        cached_med = statistics.median(cached)
        same = all(i == first.image_id for i in made)
        console.print(f"docker cached   {cached_med * 1e3:8.1f} ms median, {min(cached) * 1e3:.1f} ms min over "
                      f"{len(cached)} (same image as the cold build: {same})")
        again = docker_build(engine, context, root_id, nocache=True)
        made.append(again.image_id)
        console.print(f"docker cold #2  {again.seconds:8.2f} s  (nocache, image {again.image_id[:19]})")
        print_steps(again)
        console.print(f"docker images of two nocache builds:\n    {first.image_id}\n    {again.image_id}\n    "
                      f"{'equal' if first.image_id == again.image_id else 'DIFFERENT'}")
        return DockerFigures(cold=first, again=again, cached_med=cached_med)
    finally:
        for image_id in dict.fromkeys(made):
            engine.remove_image(image_id)  # untagged intermediate images go with it; root:latest stays
        console.print(f"removed {len(set(made))} docker-built image(s)")


if __name__ == "__main__":
    sys.exit(main())
