"""What a build hands out: the record of one built chain prefix, the built image, progress events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class LayerRecord:
    """One built image of a chain prefix: what the cache stores."""

    recipe: str
    config_digest: str
    manifest_digest: str
    diff_ids: tuple[str, ...]
    layers: tuple[tuple[str, int], ...]  # (blob digest, size) per layer, bottom first

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["diff_ids"] = list(self.diff_ids)
        d["layers"] = [list(x) for x in self.layers]
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LayerRecord:
        return cls(recipe=d["recipe"], config_digest=d["config_digest"], manifest_digest=d["manifest_digest"],
                   diff_ids=tuple(d["diff_ids"]), layers=tuple((x[0], int(x[1])) for x in d["layers"]))


@dataclass
class BuiltImage:
    recipe: str
    chain: list[str]
    layers: list[LayerRecord]  # one per chain prefix (an imported image: its own alone); the last is the image
    cached: bool  # True when every layer came from the cache
    seconds: float
    tag: str | None = None
    timings: dict[str, float] | None = None  # of the top layer, when it was built in this run

    @property
    def record(self) -> LayerRecord:
        return self.layers[-1]

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "image_id": self.record.config_digest,
            "manifest_digest": self.record.manifest_digest,
            "diff_ids": list(self.record.diff_ids),
            "chain": self.chain,
            "cached": self.cached,
            "tag": self.tag,
            "timings": {k: round(v, 3) for k, v in self.timings.items()} if self.timings is not None else None,
        }

