"""How the normalizer's cost grows with a layer's size and file count, on synthetic upper dirs up to ~2 GB.

Each case is a directory of many small files and a few large ones, normalized
as an overlay upper dir would be (no parent: every entry is new), written to a
file on the same disk. Printed per case, against peers in the same run:
``sha256sum`` of the canonical tar it wrote, and GNU ``tar --sort=name`` of the
same directory (a C tool writing about the same bytes, not the same ones).

    .venv/bin/python bench/bench_big_layer.py              # three cases, ~2.5 GB written, a few minutes
    .venv/bin/python bench/bench_big_layer.py --dir /big    # where to make them (default: /var/tmp)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import MB, timed
from rich.console import Console
from rich.table import Table

from buildsys.oci.layer.inputs import read_upper_dir
from buildsys.oci.layer.normalize import plan_layer

console = Console(highlight=False, width=140)
EPOCH = 1_700_000_000
# (name, small files, small size, large files, large size)
CASES = [
    ("10k small + 2 x 100 MB", 10_000, 4096, 2, 100 << 20),
    ("50k small + 2 x 100 MB", 50_000, 4096, 2, 100 << 20),
    ("10k small + 4 x 440 MB", 10_000, 4096, 4, 440 << 20),
]


def make_tree(root: Path, small: int, small_size: int, large: int, large_size: int) -> int:
    block = os.urandom(1 << 20)
    per_dir = 500
    for i in range(small):
        d = root / "usr" / "lib" / f"pkg{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"mod{i:06d}.py").write_bytes(block[(i * 7) % 4096:][:small_size])
    big = root / "opt" / "data"
    big.mkdir(parents=True, exist_ok=True)
    for j in range(large):
        with open(big / f"blob{j}.bin", "wb") as f:
            left = large_size
            while left:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n
    return small * small_size + large * large_size


def run_case(work: Path, name: str, spec: tuple[int, int, int, int]) -> list[str]:
    root = work / "upper"
    payload = make_tree(root, *spec)
    subprocess.run(["sync"], check=True)
    files = spec[0] + spec[2]
    walk_s, layer = timed(lambda: read_upper_dir(root))
    plan_s, plan = timed(lambda: plan_layer(layer, EPOCH))
    out = work / "layer.tar"
    with open(out, "wb") as f:
        write_s, info = timed(lambda: plan.write(f))
    total = walk_s + plan_s + write_s
    sum_s, _ = timed(lambda: subprocess.run(["sha256sum", str(out)], stdout=subprocess.DEVNULL, check=True))
    gnu_s, _ = timed(lambda: subprocess.run(
        ["tar", "--sort=name", "--numeric-owner", "--mtime=@0", "--clamp-mtime", "--format=posix",
         "-C", str(root), "-cf", str(work / "gnu.tar"), "."], check=True))
    size = info.size / MB
    row = [name, f"{files:,}", f"{payload / MB:,.0f}", f"{walk_s:.2f}", f"{plan_s:.2f}", f"{write_s:.2f}",
           f"{total:.2f}", f"{size / total:,.0f}", f"{size / sum_s:,.0f}", f"{sum_s / total:.2f}",
           f"{total / files * 1e6:.0f}", f"{size / gnu_s:,.0f}"]
    shutil.rmtree(root)
    out.unlink()
    (work / "gnu.tar").unlink()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where to make the synthetic layers")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="buildsys-bench-big-", dir=args.dir))
    table = Table(title="normalizer vs layer size and file count (upper dir, no parent; written to disk)")
    for col in ("case", "files", "MB", "walk s", "plan s", "write s", "total s", "MB/s", "sha256sum MB/s",
                "x sha256sum", "us/file", "GNU tar MB/s"):
        table.add_column(col, justify="right" if col != "case" else "left")
    started = time.monotonic()
    try:
        for name, *spec in CASES:
            table.add_row(*run_case(work, name, tuple(spec)))  # type: ignore[arg-type]
            console.print(f"  done: {name} ({time.monotonic() - started:.0f} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
