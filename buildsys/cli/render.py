"""What the person sees: the graph as text or dot, tables, and live progress.

rich loads inside the functions that draw: `buildsys graph` and `--help`
never need it.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from buildsys.build.records import BuiltImage
    from buildsys.model.graph import Graph


def graph_text(g: Graph, names: list[str]) -> str:
    lines = ["Build order:"]
    lines += [f"  {i}. {n}" + (f"  ({g.recipes[n].description})" if g.recipes[n].description else "")
              for i, n in enumerate(names, 1)]
    lines.append("")
    lines.append("Tree (a recipe with several parents is shown under each, marked *):")
    shown = set(names)

    def walk(node: str, prefix: str, last: bool, top: bool) -> None:
        multi = len(g.recipes[node].parents) > 1
        label = node + (" *" if multi else "")
        lines.append(("  " if top else prefix + ("└── " if last else "├── ")) + label)
        kids = sorted(k for k in g.dag.successors(node) if k in shown)
        child_prefix = "  " if top else prefix + ("    " if last else "│   ")
        for i, k in enumerate(kids):
            walk(k, child_prefix, i == len(kids) - 1, False)

    for root in (n for n in names if g.recipes[n].is_root):
        walk(root, "", True, True)
    lines.append("")
    lines.append("Chains (the layers of each image, bottom first):")
    width = max(len(n) for n in names)
    lines += [f"  {n:<{width}}  {' -> '.join(g.chain(n))}" for n in names]
    return "\n".join(lines)


def graph_dot(g: Graph, names: list[str], unlocked: Collection[str] = ()) -> str:
    """The DAG for graphviz: roots bold, recipes with no lock in locks/ dashed (and a legend saying so)."""
    out = ["digraph buildsys {", "  rankdir=BT;", '  node [shape=box, fontname="sans-serif"];']
    if unlocked:
        out.append('  label="dashed: no lock in locks/ (buildsys lock says why)"; fontname="sans-serif";')
    for n in names:
        styles = (["rounded", "bold"] if g.recipes[n].is_root else []) + (["dashed"] if n in unlocked else [])
        shape = f', style="{",".join(styles)}"' if styles else ""
        # The description under the name, wrapped, so the picture says what each layer holds.
        words = textwrap.wrap(g.recipes[n].description, 34)
        text = "\\n".join([n, *words]).replace('"', '\\"')
        out.append(f'  "{n}" [label="{text}"{shape}];')
    for p, c in sorted(g.dag.edges):
        if p in names and c in names:
            out.append(f'  "{c}" -> "{p}";')
    out.append("}")
    return "\n".join(out)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """A rich table on stdout, 200 columns wide so digests are never cut."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console(width=200).print(table)


def print_images(images: Sequence[BuiltImage]) -> None:
    print_table("images", ("recipe", "image id", "manifest digest", "layers", "cached", "seconds"),
                ((i.recipe, i.record.config_digest, i.record.manifest_digest, str(len(i.chain)),
                  "yes" if i.cached else "no", f"{i.seconds:.2f}") for i in images))


class LiveProgress:
    """Progress of long work on stderr; a ``core.progress.Progress``.

    On a terminal: a live table, one row per recipe, with its current stage,
    what it is doing and for how long. Elsewhere (CI logs, pipes): one line
    per event, with the elapsed time.
    """

    def __init__(self) -> None:
        from rich.console import Console

        self.console: Console = Console(stderr=True, highlight=False)
        self.started = time.monotonic()
        self.rows: dict[str, tuple[str, str, float]] = {}
        self.live: Live | None = None

    def __enter__(self) -> LiveProgress:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.__exit__(None, None, None)
            self.live = None

    def __call__(self, recipe: str, stage: str, detail: str) -> None:
        now = time.monotonic()
        if self.live is None or stage == "warning":  # a warning stays on screen, above the live table
            shown = f"[bold yellow]{stage}[/]" if stage == "warning" else stage
            self.console.print(f"[dim]{now - self.started:6.1f}s[/] [bold]{recipe}[/] {shown}: {detail}")
            if self.live is None:
                return
        self.rows[recipe] = (stage, detail, now)
        self.live.update(self._table())

    def _table(self) -> Table:
        from rich.table import Table

        table = Table(box=None, show_header=True, header_style="dim")
        for col in ("recipe", "stage", "", "since"):
            table.add_column(col)
        now = time.monotonic()
        for recipe, (stage, detail, at) in self.rows.items():
            style = "green" if stage in ("built", "cached", "written", "fresh", "unchanged") else "yellow"
            table.add_row(recipe, f"[{style}]{stage}[/]", detail[:90], f"{now - at:5.1f}s")
        return table
