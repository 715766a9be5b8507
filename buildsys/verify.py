"""``build --verify`` and ``diff``: prove two builds equal, or say what differs.

Verify builds the chain once as usual (the cache may answer), then again from
nothing into a throw-away store that shares only the vendored inputs, with no
cache and fresh containers, and compares every layer's diff_id, the config
digest and the manifest digest. On a mismatch the first differing layer is
diffed file by file.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildsys.build import Builder, BuiltImage, Reporter
from buildsys.engine import Engine
from buildsys.graph import Graph
from buildsys.image import OciLayout
from buildsys.layer import FileDifference, diff_layers
from buildsys.lockfile import Lock
from buildsys.store import Store


@dataclass
class LayerMismatch:
    recipe: str  # the recipe whose layer differs first
    index: int  # its position in the chain
    diff_id: tuple[str, str]
    files: list[FileDifference]
    config: list[str]  # config keys that differ


@dataclass
class VerifyResult:
    recipe: str
    first: BuiltImage
    second: BuiltImage
    mismatch: LayerMismatch | None = None
    config_only: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return self.mismatch is None and self.first.record == self.second.record


def verify(project: Path, store: Store, graph: Graph, locks: Mapping[str, Lock], names: Sequence[str],
           engine: Engine | None, report: Reporter) -> list[VerifyResult]:
    first = Builder(project, store, graph, locks, engine=engine, report=report).build(names)
    results: list[VerifyResult] = []
    with tempfile.TemporaryDirectory(dir=store.tmp, prefix="verify-") as tmp:
        fresh = Store(Path(tmp), vendor_root=store.vendor_root)
        report("*", "verify", "rebuilding from nothing (no cache, fresh store)")
        second = Builder(project, fresh, graph, locks, engine=engine, no_cache=True, tag=False,
                         report=lambda r, s, d: report(r, f"verify {s}", d)).build(names)
        for a, b in zip(first, second, strict=True):
            results.append(compare(a, b, OciLayout(store.oci), OciLayout(fresh.oci)))
    return results


def compare(a: BuiltImage, b: BuiltImage, layout_a: OciLayout, layout_b: OciLayout) -> VerifyResult:
    result = VerifyResult(recipe=a.recipe, first=a, second=b)
    for i, (la, lb) in enumerate(zip(a.layers, b.layers, strict=True)):
        da, db = la.diff_ids[-1], lb.diff_ids[-1]
        if da != db or la.config_digest != lb.config_digest:
            files = diff_layers(layout_a.blob_path(la.layers[-1][0]), layout_b.blob_path(lb.layers[-1][0])) \
                if da != db else []
            cfg = config_differences(layout_a.read_config(la.config_digest), layout_b.read_config(lb.config_digest))
            result.mismatch = LayerMismatch(recipe=a.chain[i], index=i, diff_id=(da, db), files=files, config=cfg)
            break
    return result


def config_differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The key paths whose values differ between two JSON objects."""
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, path + ".")
        elif va != vb:
            out.append(f"{path}: {json.dumps(va)[:80]} != {json.dumps(vb)[:80]}")
    return out


def format_mismatch(result: VerifyResult, limit: int = 50) -> str:
    m = result.mismatch
    assert m is not None
    lines = [f"{result.recipe}: NOT reproducible; first differing layer: '{m.recipe}' (layer {m.index + 1} of "
             f"{len(result.first.chain)})"]
    if m.diff_id[0] != m.diff_id[1]:
        lines.append(f"  diff_id {m.diff_id[0]}\n       vs {m.diff_id[1]}")
    for d in m.files[:limit]:
        lines.append(f"  {d.path}: {', '.join(d.what)}")
        if d.detail:
            lines += [f"      {ln}" for ln in d.detail.splitlines()]
    if len(m.files) > limit:
        lines.append(f"  ... and {len(m.files) - limit} more files")
    lines += [f"  config {c}" for c in m.config]
    return "\n".join(lines)
