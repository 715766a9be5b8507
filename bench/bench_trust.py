"""What trusting nothing costs: the checks of locks and the store, timed against plain work in one process.

- reading every bundled lock with its schema check, against parsing the same TOML alone;
- `lock --check` of the stack with the coverage check (in-process, no engine);
- the pip closure read from the vendored wheels of the `jupyter` layer;
- a no-op `fetch` of the `jupyter` chain: first with no stamps (every file rehashed, as a store
  written by an older buildsys is), then stamped (a stat per file), against `sha256sum`-like
  hashing of the same files in Python.

    .venv/bin/python bench/bench_trust.py            # uses the project's store (run `make demo` first)
    .venv/bin/python bench/bench_trust.py --store S

It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import sys
import time
from pathlib import Path

import tomlkit
from benchlib import MB, timed
from rich.console import Console
from rich.table import Table

from buildsys.core.store import Store
from buildsys.ecosystems import artifacts
from buildsys.ecosystems.pip import PipSection, pip_closure
from buildsys.fetch.vendor import fetch
from buildsys.lock import check_locks, fresh_locks
from buildsys.model.graph import build_graph
from buildsys.model.lockfile import read_lock
from buildsys.model.recipe import load_recipes

ROOT = Path(__file__).resolve().parents[1]


def median_of(fn, n: int = 5) -> float:  # type: ignore[no-untyped-def]
    return statistics.median(timed(fn)[0] for _ in range(n))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=ROOT / ".buildsys")
    args = ap.parse_args()
    store = Store(args.store)
    graph = build_graph(load_recipes(ROOT))
    locks = fresh_locks(ROOT, graph, ["jupyter"])
    arts = {a.sha256: a for lk in locks.values() for a in artifacts(lk)}
    missing = [a for a in arts.values() if not store.has_artifact(a)]
    if missing:
        print(f"{len(missing)} artifacts of the jupyter chain are not vendored in {args.store}: run `make demo` first")
        return 1
    rows: list[tuple[str, str, str, str]] = []

    paths = sorted((ROOT / "locks").glob("*.lock"))
    parse = median_of(lambda: [tomlkit.parse(p.read_text()).unwrap() for p in paths])
    read = median_of(lambda: [read_lock(p) for p in paths])
    rows.append((f"read {len(paths)} locks with the schema check", f"{read * 1e3:.0f} ms",
                 f"TOML parse alone {parse * 1e3:.0f} ms", f"{read / parse:.2f}"))

    check = median_of(lambda: check_locks(ROOT, graph, ["jupyter", "keras"]))
    rows.append(("lock --check jupyter keras (coverage included)", f"{check * 1e3:.0f} ms", "", ""))

    chain = [locks[n] for n in graph.chain("jupyter")]
    closure = median_of(lambda: pip_closure(store, chain, locks["jupyter"]))
    wheels = sum(1 for p in locks["jupyter"].section(PipSection).packages for _ in p.artifacts())
    rows.append((f"pip closure of jupyter ({wheels} wheels' METADATA)", f"{closure * 1e3:.0f} ms", "", ""))

    files = [store.vendor_path(a.sha256) for a in arts.values()]
    total = sum(f.stat().st_size for f in files)

    def hash_all() -> None:
        for f in files:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)

    hashing = median_of(hash_all, 3)
    stamps = store.vendor_root / "verified"
    shutil.rmtree(stamps, ignore_errors=True)
    cold, report = timed(lambda: fetch(store, list(arts.values()), progress=False))
    assert report.downloaded == 0, report
    warm = median_of(lambda: fetch(store, list(arts.values()), progress=False))
    rows.append((f"no-op fetch, no stamps ({len(files)} files, {total / MB:.0f} MB rehashed)", f"{cold:.2f} s",
                 f"one sha256 pass {hashing:.2f} s ({total / MB / hashing:.0f} MB/s)", f"{cold / hashing:.2f}"))
    rows.append(("no-op fetch, stamped (a stat per file)", f"{warm * 1e3:.0f} ms",
                 f"one sha256 pass {hashing:.2f} s", f"{warm / hashing:.4f}"))

    table = Table(title="trusting nothing: cost", title_justify="left")
    for col in ("what", "time (median)", "peer in the same run", "ratio"):
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    Console(width=160).print(table)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    started = time.monotonic()
    code = main()
    print(f"({time.monotonic() - started:.0f} s)")
    sys.exit(code)
