"""How the normalizer's cost grows with a layer's size and file count, on synthetic upper dirs up to ~2 GB.

Each case is a directory of many small files and a few large ones, normalized
as an overlay upper dir would be (no parent: every entry is new), written to a
file on the same disk. Printed per case, against peers in the same run:
``sha256sum`` of the canonical tar it wrote, and GNU ``tar --sort=name`` of the
same directory (a C tool writing about the same bytes, not the same ones).

A second table prices compressing at build time (``compress.Compressor`` as a
sink of the same write, gzip, on 1 and 2 workers) against the write alone and
against today's separate pass (``compress_file`` of the written layer, 2
workers, as publish does), as ratios of the plain write measured in the same
process; the one-pass blob is checked to be the separate pass's, byte for byte.

    .venv/bin/python bench/bench_big_layer.py              # three cases, ~2.5 GB written, a few minutes
    .venv/bin/python bench/bench_big_layer.py --dir /big    # where to make them (default: /var/tmp)
    .venv/bin/python bench/bench_big_layer.py --content text  # text-like files (compress ~1.4x) not random
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from benchlib import MB, timed
from rich.console import Console
from rich.table import Table

from buildsys.oci.compress import Compressed, Compressor, compress_file, method
from buildsys.oci.layer.inputs import read_upper_dir
from buildsys.oci.layer.normalize import LayerPlan, plan_layer

console = Console(highlight=False, width=140)
T = TypeVar("T")
EPOCH = 1_700_000_000
# (name, small files, small size, large files, large size)
CASES = [
    ("10k small + 2 x 100 MB", 10_000, 4096, 2, 100 << 20),
    ("50k small + 2 x 100 MB", 50_000, 4096, 2, 100 << 20),
    ("10k small + 4 x 440 MB", 10_000, 4096, 4, 440 << 20),
]


def text_block(size: int) -> bytes:
    """Words and paths with random runs between, like a layer's scripts and libraries (gzip 6 keeps ~70%)."""
    rnd = random.Random(7)
    words = [bytes(rnd.choices(b"abcdefghijklmnopqrstuvwxyz_/.", k=rnd.randint(2, 12))) for _ in range(4000)]
    out = bytearray()
    while len(out) < size:
        out += rnd.randbytes(rnd.randint(100, 20000)) if rnd.random() < 0.1 else \
            b" ".join(rnd.choices(words, k=200)) + b"\n"
    return bytes(out[:size])


def make_tree(root: Path, small: int, small_size: int, large: int, large_size: int, text: bool) -> int:
    block = text_block(1 << 20) if text else os.urandom(1 << 20)
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


def write_compressing(plan: LayerPlan, out: Path, blob: Path, threads: int) -> Compressed:
    """The layer written as a build writes it, with a gzip sink fed the same bytes; until the blob is whole."""
    with open(out, "wb") as f, open(blob, "wb") as g:
        sink = Compressor(method("gzip"), g, threads=threads)
        info = plan.write(f, sink)
        return sink.close(info.digest)


def cpu_timed(run: Callable[[], T]) -> tuple[float, float, T]:
    """Wall seconds, CPU seconds of this process (every thread, user + system), result."""
    c0, t0 = os.times(), time.monotonic()
    result = run()
    t1, c1 = time.monotonic(), os.times()
    return t1 - t0, c1.user - c0.user + c1.system - c0.system, result


def best(repeat: int, run: Callable[[], T]) -> tuple[float, float, T]:
    """The fastest of ``repeat`` runs (a shared machine's load only ever adds time), with its CPU seconds."""
    return min((cpu_timed(run) for _ in range(repeat)), key=lambda r: r[0])


def compression_row(name: str, work: Path, plan: LayerPlan, out: Path, repeat: int) -> list[str]:
    blob = work / "layer.tar.gz"

    def plain() -> None:
        with open(out, "wb") as f:
            plan.write(f)

    def separate() -> Compressed:
        with open(blob, "wb") as g:
            return compress_file(method("gzip"), out, g, threads=2)

    write_s, write_cpu, _ = best(repeat, plain)
    one_s, _, one = best(repeat, lambda: write_compressing(plan, out, blob, 1))
    two_s, two_cpu, two = best(repeat, lambda: write_compressing(plan, out, blob, 2))
    pass_s, pass_cpu, later = best(repeat, separate)
    assert one == two == later, (one, two, later)  # the one-pass blob is the separate pass's
    size = plan.size / MB
    blob.unlink()
    return [name, f"{size:,.0f}", f"{later.size / later.uncompressed_size:.2f}", f"{write_s:.2f}",
            f"{one_s:.2f}", f"{one_s / write_s:.2f}", f"{two_s:.2f}", f"{two_s / write_s:.2f}", f"{pass_s:.2f}",
            f"{(write_s + pass_s) / write_s:.2f}", f"{size / two_s:,.0f}", f"{size / pass_s:,.0f}",
            f"{write_cpu:.1f} / {two_cpu:.1f} / {write_cpu + pass_cpu:.1f}"]


def run_case(work: Path, name: str, spec: tuple[int, int, int, int], text: bool,
             gz_rows: list[list[str]], repeat: int) -> list[str]:
    root = work / "upper"
    payload = make_tree(root, *spec, text)
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
    gz_rows.append(compression_row(name, work, plan, out, repeat))
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
    p.add_argument("--content", choices=("random", "text"), default="random",
                   help="what the files hold: random bytes (gzip cannot shrink them) or text-like runs")
    p.add_argument("--cases", type=int, default=len(CASES), help="run the first N cases only")
    p.add_argument("--repeat", type=int, default=1, help="time each way of writing N times, keep the fastest")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="buildsys-bench-big-", dir=args.dir))
    table = Table(title="normalizer vs layer size and file count (upper dir, no parent; written to disk)")
    for col in ("case", "files", "MB", "walk s", "plan s", "write s", "total s", "MB/s", "sha256sum MB/s",
                "x sha256sum", "us/file", "GNU tar MB/s"):
        table.add_column(col, justify="right" if col != "case" else "left")
    gz = Table(title=f"gzip during the write ({args.content} files) vs after it; x: seconds / the plain write's "
                     f"(best of {args.repeat})")
    for col in ("case", "MB", "gz/raw", "write s", "+sink 1w s", "x", "+sink 2w s", "x", "pass 2w s",
                "write+pass x", "sink 2w MB/s", "pass MB/s", "CPU s: write / +sink 2w / +pass"):
        gz.add_column(col, justify="right" if col != "case" else "left")
    gz_rows: list[list[str]] = []
    started = time.monotonic()
    try:
        for name, *spec in CASES[:args.cases]:
            table.add_row(*run_case(work, name, tuple(spec), args.content == "text",  # type: ignore[arg-type]
                                    gz_rows, args.repeat))
            console.print(f"  done: {name} ({time.monotonic() - started:.0f} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for row in gz_rows:
        gz.add_row(*row)
    console.print(table)
    console.print(gz)
    return 0


if __name__ == "__main__":
    sys.exit(main())
