"""Time ``buildsys lock --upgrade`` of the GPU recipes and count the bytes it downloads, against pip-compile.

In one process, on a copy of the project (its locks/ are rewritten there, never
in the repository) and with a store of its own:

- ``buildsys lock --upgrade RECIPE`` (a fresh resolution) for ``pytorch`` and
  ``keras`` and a small recipe (numpy + requests on ``python``): seconds, the
  bytes each index host sent, the pins, and the bytes of the wheels the lock
  describes (the selected ones, and every file of each pinned release);
- the same lock without pip's fast-deps (``pip_resolve._LAZY_WHEELS``), as it
  was before: pip reads a wheel's dependencies from the whole wheel where the
  index does not serve its METADATA alone (PEP 658);
- the peer: ``pip-compile --generate-hashes`` of the same requirements with the
  same constraints, in the same parent image with the same pip-tools, stopped
  after ``--peer-seconds``; where it is stopped, the time it would take is
  estimated from the bytes it needs (the whole selected wheels to read their
  metadata, then every file of every pinned release to hash it: pip-tools
  7.6.2 looks for PyPI's JSON API at ``https://pypi.org/<name>/json``, a 404)
  at the rate it downloaded;
- the host's index reads alone (every pinned project's simple page), on one
  client shared by 8 threads as the lock does, against a new client per page
  (as before: two DNS lookups and a TLS handshake a page);
- with ``--uv PATH`` (a uv binary, e.g. from uv's wheel on PyPI, unpacked by
  hand: buildsys does not use uv), ``uv pip compile --generate-hashes`` of the
  same requirements in the same image, and whether its pins are the lock's.

Bytes are counted by an HTTP CONNECT proxy on loopback that the lock's host
side (the index client) and its container (network "host") are pointed at with
``HTTPS_PROXY``: each figure is what one host sent through the tunnels, TLS
included, and nothing else on the machine. The host NIC's received bytes over
the same interval (``/proc/net/dev``, every process of the machine) are printed
beside them as a cross-check.

    .venv/bin/python bench/bench_lock.py                       # pytorch and keras, throw-away copy and store
    .venv/bin/python bench/bench_lock.py pytorch --store /tmp/s  # keep the store (python image, pip-tools)
    .venv/bin/python bench/bench_lock.py --no-before --peer-seconds 30
    .venv/bin/python bench/bench_lock.py --uv /tmp/uv/uv-0.9.9.data/scripts/uv

The parent image ``python`` (and ``base``) is built first from the project's
locks, untagged (a few minutes in a new store); docker keeps it after the run.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import selectors
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchlib import MB, timed
from rich.console import Console
from rich.table import Table

from buildsys.build.builder import Builder
from buildsys.core.store import Store
from buildsys.ecosystems import artifacts as locked_artifacts
from buildsys.ecosystems import pip_resolve, pypi
from buildsys.ecosystems.pip import PipSection, chain_pips
from buildsys.ecosystems.pip_resolve import PipRecipe
from buildsys.ecosystems.pip_tools import host_ca_bundle, tools_dir
from buildsys.ecosystems.pypi import DEFAULT_INDEX, canonical_name
from buildsys.engine import Engine
from buildsys.fetch.vendor import fetch
from buildsys.lock import fresh_locks, lock_recipes
from buildsys.model.graph import Graph, build_graph
from buildsys.model.recipe import load_recipes

PROJECT = Path(__file__).resolve().parent.parent
SMALL = "bench-lock-small"  # written into the copy only
SMALL_TOML = ('description = "bench_lock: a small [pip] set on python"\nparents = ["python"]\n\n'
              '[pip]\npackages = ["numpy>=2,<3", "requests"]\n')
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
GB = 1e9

console = Console(highlight=False, width=120)


class CountingProxy:
    """An HTTP CONNECT proxy on loopback that counts, per host, the bytes sent back through its tunnels."""

    def __init__(self) -> None:
        self.received: collections.Counter[str] = collections.Counter()
        self._guard = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._serve, name="bench-proxy", daemon=True).start()

    def snapshot(self) -> dict[str, int]:
        with self._guard:
            return dict(self.received)

    def close(self) -> None:
        self._sock.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(conn,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            words = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(words) < 2 or words[0] != "CONNECT":  # every index here is https: only tunnels
                client.sendall(b"HTTP/1.1 405 CONNECT only\r\nContent-Length: 0\r\n\r\n")
                return
            host, _, port = words[1].rpartition(":")
            try:
                upstream = socket.create_connection((host, int(port)), timeout=30)
            except (OSError, ValueError):
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            with upstream:
                upstream.settimeout(None)
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self._pump(client, upstream, host)

    def _pump(self, client: socket.socket, upstream: socket.socket, host: str) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(client, selectors.EVENT_READ, upstream)
            sel.register(upstream, selectors.EVENT_READ, client)
            while True:
                for key, _ in sel.select():
                    src, dst = key.fileobj, key.data
                    assert isinstance(src, socket.socket)
                    try:
                        data = src.recv(1 << 16)
                        if data:
                            dst.sendall(data)
                    except OSError:
                        return
                    if not data:
                        return
                    if src is upstream:
                        with self._guard:
                            self.received[host] += len(data)


@contextlib.contextmanager
def through(proxy: CountingProxy) -> Iterator[None]:
    """Point this process and the containers it starts (lock passes the proxy variables on) at ``proxy``."""
    saved = {k: os.environ.get(k) for k in (*PROXY_VARS, "NO_PROXY", "no_proxy")}
    os.environ.update({k: proxy.url for k in PROXY_VARS})
    os.environ.pop("NO_PROXY", None)
    os.environ.pop("no_proxy", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def nic_received() -> int:
    """Bytes received by the machine's interfaces other than loopback (every process: a cross-check only)."""
    total = 0
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, _, fields = line.partition(":")
        if name.strip() != "lo" and fields.split():
            total += int(fields.split()[0])
    return total


@dataclass
class Measured:
    seconds: float
    by_host: dict[str, int]
    nic: int

    @property
    def total(self) -> int:
        return sum(self.by_host.values())

    def hosts(self) -> str:
        return ", ".join(f"{h} {n / MB:.1f} MB" for h, n in sorted(self.by_host.items())) or "nothing"


@contextlib.contextmanager
def measuring(proxy: CountingProxy, out: list[Measured]) -> Iterator[None]:
    before, nic, start = proxy.snapshot(), nic_received(), time.perf_counter()
    with through(proxy):
        yield
    seconds, after = time.perf_counter() - start, proxy.snapshot()
    out.append(Measured(seconds, {h: n - before.get(h, 0) for h, n in after.items() if n > before.get(h, 0)},
                        nic_received() - nic))


@contextlib.contextmanager
def whole_wheels() -> Iterator[None]:
    """The lock script as it was before fast-deps: pip downloads a wheel to read its metadata."""
    real = pip_resolve._LAZY_WHEELS
    pip_resolve._LAZY_WHEELS = ": bench_lock: whole wheels"
    try:
        yield
    finally:
        pip_resolve._LAZY_WHEELS = real


@dataclass
class Described:
    """What a lock describes: its own pins and the sizes of their files."""

    pins: int
    selected: int  # bytes of the files the image installs
    files: int  # every file of the pinned releases
    every: int  # bytes of those files

    @classmethod
    def of(cls, project: Path, graph: Graph, name: str) -> Described:
        pip = fresh_locks(project, graph, [name])[name].section(PipSection)
        chosen = [f for p in pip.packages for f in p.files if f.name == p.selected]
        every = [f for p in pip.packages for f in p.files]
        return cls(len(pip.packages), sum(f.size or 0 for f in chosen), len(every), sum(f.size or 0 for f in every))


def copy_project(src: Path, dst: Path) -> None:
    for folder in ("recipes", "locks"):
        shutil.copytree(src / folder, dst / folder)
    if (src / "mirrors.toml").is_file():
        shutil.copy2(src / "mirrors.toml", dst / "mirrors.toml")
    (dst / "recipes" / f"{SMALL}.toml").write_text(SMALL_TOML)


def prepare_parents(project: Path, store: Store, graph: Graph, engine: Engine, names: Sequence[str]) -> dict[str, str]:
    """Build (untagged) and load the parent image of each recipe; the image reference of each."""
    parents = {name: graph.recipes[name].parents[0] for name in names}
    locks = fresh_locks(project, graph, sorted(set(parents.values())))
    arts = {a.sha256: a for lk in locks.values() for a in locked_artifacts(lk)}
    fetch(store, sorted(arts.values(), key=lambda a: a.filename), progress=False)
    builder = Builder(store, graph, locks, engine=engine, tag=False)
    refs = {}
    for built in builder.build(sorted(set(parents.values()))):
        builder.load(built.record)
        refs[built.recipe] = built.record.config_digest
    return {name: refs[parent] for name, parent in parents.items()}


def lock_fresh(project: Path, store: Store, graph: Graph, engine: Engine, name: str) -> None:
    lock_recipes(project, store, graph, [name], upgrade=True,
                 parent_images=lambda locks: Builder(store, graph, locks, engine=engine, tag=False),
                 vendor=lambda arts: fetch(store, arts, progress=False))


@dataclass
class Peer:
    measured: Measured
    finished: bool
    hashed: int  # files pip-tools hashed ("Hashing" lines of its log)
    pins: dict[str, str]  # what it wrote


def pip_compile_hashes(engine: Engine, image: str, store: Store, requirements: Sequence[str],
                       constraints: dict[str, str], seconds: int, proxy: CountingProxy) -> Peer:
    """``pip-compile --generate-hashes`` as a user runs it, in ``image``, stopped after ``seconds``."""
    args = ["--generate-hashes", "-v", "--allow-unsafe", "--no-header", "--no-annotate", "--strip-extras",
            "--no-config", "--index-url", DEFAULT_INDEX, "-c", "/work/constraints.txt", "-o", "/work/out.txt",
            "/work/in.txt"]
    command = ("export PIP_CONFIG_FILE=/dev/null PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1\n"
               f"timeout {seconds} python3 -m piptools compile {shlex.join(args)}")
    return in_image(engine, image, store, requirements, constraints, command, proxy)


def uv_compile_hashes(engine: Engine, image: str, store: Store, uv: Path, requirements: Sequence[str],
                      constraints: dict[str, str], seconds: int, proxy: CountingProxy) -> Peer:
    """``uv pip compile --generate-hashes`` for the image's python3, no cache, stopped after ``seconds``."""
    args = ["pip", "compile", "--generate-hashes", "--no-config", "--no-cache", "--python", "python3", "--no-header",
            "--no-annotate", "--index-url", DEFAULT_INDEX, "-c", "/work/constraints.txt", "-o", "/work/out.txt",
            "/work/in.txt"]
    return in_image(engine, image, store, requirements, constraints,
                    f"timeout {seconds} /uv/{shlex.quote(uv.name)} {shlex.join(args)}", proxy,
                    [(str(uv.resolve().parent), "/uv", True)])


def in_image(engine: Engine, image: str, store: Store, requirements: Sequence[str], constraints: dict[str, str],
             command: str, proxy: CountingProxy, more: Sequence[tuple[str, str, bool]] = ()) -> Peer:
    """Run ``command`` (which writes /work/out.txt from /work/in.txt) in ``image`` as the lock does."""
    with tempfile.TemporaryDirectory(dir=store.tmp, prefix="bench-peer-") as tmp:
        work = Path(tmp)
        (work / "in.txt").write_text("".join(f"{r}\n" for r in requirements))
        (work / "constraints.txt").write_text("".join(f"{n}=={v}\n" for n, v in sorted(constraints.items())))
        (work / "peer.sh").write_text(f"{command} >/work/compile.log 2>&1\necho $? >/work/rc\n")
        mounts = [(str(tools_dir(store)), pip_resolve.TOOLS_MOUNT, True), (str(work), "/work", False), *more]
        env = {"PYTHONPATH": pip_resolve.TOOLS_MOUNT, "PYTHONNOUSERSITE": "1", "HOME": "/tmp"}
        ca = host_ca_bundle()
        if ca:
            mounts.append((str(ca), pip_resolve.CA_MOUNT, True))
            env.update(PIP_CERT=pip_resolve.CA_MOUNT, SSL_CERT_FILE=pip_resolve.CA_MOUNT)
        got: list[Measured] = []
        with measuring(proxy, got):
            env.update({k: proxy.url for k in PROXY_VARS})
            engine.run(image, ["/work/peer.sh"], entrypoint=["/bin/sh"], network="host", user="0:0", env=env,
                       mounts=mounts, workdir="/work")
        rc = (work / "rc").read_text().strip() if (work / "rc").is_file() else "?"
        log = (work / "compile.log").read_text(errors="replace") if (work / "compile.log").is_file() else ""
        out = (work / "out.txt").read_text() if (work / "out.txt").is_file() else ""
        if rc not in ("0", "124"):
            console.print(f"[red]{command.split(chr(10))[-1][:60]}... exited {rc}[/]:\n"
                          + "\n".join(log.splitlines()[-15:]))
        return Peer(got[0], rc == "0", log.count("Hashing "), pins_of(out))


def pins_of(text: str) -> dict[str, str]:
    """name -> version of a requirements file's ``name==version`` lines."""
    pins = {}
    for line in text.splitlines():
        name, sep, version = line.split(";")[0].split(" ")[0].partition("==")
        if sep and not line.startswith((" ", "#")):
            pins[canonical_name(name.split("[")[0])] = version.strip()
    return pins


@dataclass
class Row:
    name: str
    described: Described
    after: Measured
    before: Measured | None
    peer: Peer | None
    uv: Peer | None


def index_reads(projects: Sequence[str]) -> tuple[float, float]:
    """Seconds to read the projects' index pages (what a lock reads on the host), best of 2 each, alternated:
    ``pypi.index_files_many`` (one client for its 8 threads), and the peer, a new client per page (as before:
    two DNS lookups and a TLS handshake each)."""
    def per_page() -> object:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(lambda p: pypi.index_files(DEFAULT_INDEX, p), projects))

    shared, old = [], []
    for _ in range(2):
        shared.append(timed(lambda: pypi.index_files_many(DEFAULT_INDEX, projects))[0])
        old.append(timed(per_page)[0])
    return min(shared), min(old)


def estimate(row: Row) -> tuple[float, float] | None:
    """(seconds, bytes) a stopped peer would need: the selected wheels for metadata plus every file to hash."""
    peer = row.peer
    if peer is None or peer.finished or not peer.measured.total:
        return None
    need = row.described.selected + row.described.every
    return need / (peer.measured.total / peer.measured.seconds), float(need)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", nargs="*", default=["pytorch", "keras"], help="recipes to lock (default: pytorch keras)")
    p.add_argument("--project", type=Path, default=PROJECT,
                   help="project whose recipes/ and locks/ are copied (default: this repository; never written)")
    p.add_argument("--store", type=Path, help="store folder to use (kept); default: a throw-away one")
    p.add_argument("--keep", action="store_true", help="keep the throw-away folder and print where it is")
    p.add_argument("--peer-seconds", type=int, default=60,
                   help="stop pip-compile --generate-hashes after this long (default 60)")
    p.add_argument("--no-peer", action="store_true", help="skip pip-compile --generate-hashes")
    p.add_argument("--no-before", action="store_true", help="skip the lock without fast-deps")
    p.add_argument("--uv", type=Path, help="a uv binary: time uv pip compile --generate-hashes too")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="buildsys-bench-lock-"))
    proxy = CountingProxy()
    try:
        return run(args, work, proxy)
    finally:
        proxy.close()
        if args.keep:
            console.print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path, proxy: CountingProxy) -> int:
    project = work / "project"
    copy_project(args.project.resolve(), project)
    store = Store((args.store or work / "store").resolve())
    graph = build_graph(load_recipes(project))
    names = [SMALL, *args.recipes]
    console.print(f"project {project} (a copy of {args.project.resolve()})\nstore   {store.root}")

    # 0. outside the figures: pip-tools on the host, the parent images built and loaded
    engine = Engine.connect()
    tools_s, _ = timed(lambda: tools_dir(store))
    prep_s, images = timed(lambda: prepare_parents(project, store, graph, engine, names))
    console.print(f"prepare         {tools_s + prep_s:8.1f} s  (pip-tools on the host, then the parent images "
                  f"{', '.join(sorted({i[:19] for i in images.values()}))} built and loaded)")

    rows = []
    for name in names:
        got: list[Measured] = []
        # After first: whatever the first run warms (an index cache on the way) favours the older way.
        with measuring(proxy, got):
            lock_fresh(project, store, graph, engine, name)
        described = Described.of(project, graph, name)
        after = got[-1]
        console.print(f"{name:<16}{after.seconds:8.1f} s  lock --upgrade: {after.hosts()} "
                      f"(NIC {after.nic / MB:.0f} MB); {described.pins} pins, wheels {described.selected / MB:.0f} MB, "
                      f"{described.files} files of the releases {described.every / MB:.0f} MB")
        before = None
        if not args.no_before:
            with whole_wheels(), measuring(proxy, got):
                lock_fresh(project, store, graph, engine, name)
            before = got[-1]
            console.print(f"{'':<16}{before.seconds:8.1f} s  without fast-deps: {before.hosts()} "
                          f"(NIC {before.nic / MB:.0f} MB)")
        locks = fresh_locks(project, graph, [name])
        constraints = chain_pips([locks[n] for n in graph.chain(name)[:-1]])
        requirements = graph.recipes[name].section(PipRecipe).packages
        peer = None
        if not args.no_peer:
            peer = pip_compile_hashes(engine, images[name], store, requirements, constraints, args.peer_seconds, proxy)
            state = "finished" if peer.finished else f"stopped after {args.peer_seconds} s"
            console.print(f"{'':<16}{peer.measured.seconds:8.1f} s  pip-compile --generate-hashes ({state}, "
                          f"{peer.hashed} files hashed, {len(peer.pins)} pins): {peer.measured.hosts()}")
        uv = None
        if args.uv:
            uv = uv_compile_hashes(engine, images[name], store, args.uv, requirements, constraints, args.peer_seconds,
                                   proxy)
            mine = {canonical_name(p.name): p.version for p in locks[name].section(PipSection).packages}
            differ = sorted(n for n, v in mine.items() if uv.pins.get(n) != v)
            same = "the lock's" if not differ else f"{len(differ)} differ from the lock: {', '.join(differ[:5])}"
            console.print(f"{'':<16}{uv.measured.seconds:8.1f} s  uv pip compile --generate-hashes "
                          f"({'finished' if uv.finished else 'stopped'}, {len(uv.pins)} pins, {same}): "
                          f"{uv.measured.hosts()}")
        shared, per_page = index_reads([p.name for p in locks[name].section(PipSection).packages])
        console.print(f"{'':<16}{shared:8.1f} s  the host's index reads of the {described.pins} pins, one client "
                      f"(lock's way); a client per page (before): {per_page:.1f} s "
                      f"(ratio {shared / per_page:.2f}; best of 2 each, alternated)")
        rows.append(Row(name, described, after, before, peer, uv))

    table = Table(title="buildsys lock --upgrade against pip-compile --generate-hashes, same image and index",
                  title_justify="left")
    for col in ("recipe", "pins", "wheels MB", "all files MB", "lock s", "lock MB", "whole wheels s (MB)",
                "pip-compile s (MB)", "/ lock s", "uv s (MB)"):
        table.add_column(col, justify="right")
    for r in rows:
        d, est = r.described, estimate(r)
        old = f"{r.before.seconds:.1f} ({r.before.total / MB:.0f})" if r.before else "-"
        if r.peer is None:
            hashed, ratio = "-", "-"
        elif est:
            hashed = f"~{est[0]:.0f} (~{est[1] / MB:,.0f}) est."
            ratio = f"~{est[0] / r.after.seconds:.0f}"
        else:
            hashed = f"{r.peer.measured.seconds:.1f} ({r.peer.measured.total / MB:.0f})"
            ratio = f"{r.peer.measured.seconds / r.after.seconds:.1f}"
        table.add_row(r.name, str(d.pins), f"{d.selected / MB:,.0f}", f"{d.every / MB:,.0f}",
                      f"{r.after.seconds:.1f}", f"{r.after.total / MB:.1f}", old, hashed, ratio,
                      f"{r.uv.measured.seconds:.1f} ({r.uv.measured.total / MB:.1f})" if r.uv else "-")
    console.print(table)
    console.print("MB: what the index hosts sent through the counting proxy (index pages, metadata, files), TLS "
                  "included. whole wheels: the lock without fast-deps. pip-compile and uv: --generate-hashes; est.: "
                  "the selected wheels plus every release file at the rate the stopped run downloaded.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
