"""The dataset store's manifest.json as a typed, read-only record.

Every stage reads the store through `StoreManifest` (from `store.read_manifest`), so the
JSON keys are spelled in one place and older manifests are upgraded here, once, instead
of each reader guessing with `.get(key, default)`. `build_store` writes the JSON; this
module only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional

import numpy as np


def _frozen(d: Optional[Mapping]) -> Mapping:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class Shard:
    """One TFRecord file of a split."""

    file: str
    count: int
    sha256: str

    def to_json(self) -> dict:
        return {"file": self.file, "count": self.count, "sha256": self.sha256}


@dataclass(frozen=True)
class SplitInfo:
    """One split: its size, whether it carries labels, its per-class counts and shards."""

    count: int
    labeled: bool
    per_class: Mapping[str, int] = field(default_factory=dict)
    shards: tuple[Shard, ...] = ()

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "SplitInfo":
        return cls(count=int(d.get("count", 0)), labeled=bool(d.get("labeled", False)),
                   per_class=_frozen(d.get("per_class")),
                   shards=tuple(Shard(s["file"], int(s["count"]), s["sha256"])
                                for s in d.get("shards", ())))

    def to_json(self) -> dict:
        return {"count": self.count, "labeled": self.labeled, "per_class": dict(self.per_class),
                "shards": [s.to_json() for s in self.shards]}


@dataclass(frozen=True)
class FeatureStats:
    """Standardisation statistics of a table's pretraining pool (never the test split)."""

    mean: np.ndarray
    std: np.ndarray


@dataclass(frozen=True)
class StoreManifest:
    """What a store holds. `raw` keeps the JSON as written (for lineage and the card)."""

    name: str
    modality: str  # image | text | tabular
    task: str  # classification | regression | none (unlabeled only)
    shape: tuple[int, ...]  # one example's shape; () for text
    num_classes: int
    class_names: tuple[str, ...]
    splits: Mapping[str, SplitInfo]
    format_version: int = 1
    config_key: Optional[str] = None
    split_key: Optional[str] = None
    seed: Optional[int] = None
    labels_per_class: Optional[int] = None
    labeled_fraction: Optional[float] = None
    source: Mapping[str, Any] = field(default_factory=dict)
    contamination: Mapping[str, Any] = field(default_factory=dict)
    skipped: Mapping[str, Any] = field(default_factory=dict)
    feature_stats: Optional[FeatureStats] = None  # tabular
    feature_names: tuple[str, ...] = ()  # tabular
    columns: tuple[dict, ...] = ()  # tabular: each column's encoding (as written)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "StoreManifest":
        """The one place older manifests are upgraded: format 1 had no `task` (its stores
        were classification ones) and no tabular keys."""
        stats = d.get("feature_stats")
        return cls(
            name=str(d.get("name", "")), modality=d["modality"],
            task=d.get("task") or "classification",
            shape=tuple(int(s) for s in d.get("shape") or ()),
            num_classes=int(d.get("num_classes") or 0),
            class_names=tuple(d.get("class_names") or ()),
            splits=_frozen({k: SplitInfo.from_json(v) for k, v in (d.get("splits") or {}).items()}),
            format_version=int(d.get("format_version", 1)),
            config_key=d.get("config_key"), split_key=d.get("split_key"), seed=d.get("seed"),
            labels_per_class=d.get("labels_per_class"),
            labeled_fraction=d.get("labeled_fraction"),

            source=_frozen(d.get("source")), contamination=_frozen(d.get("contamination")),
            skipped=_frozen(d.get("skipped")),
            feature_stats=(FeatureStats(np.asarray(stats["mean"], np.float64),
                                        np.asarray(stats["std"], np.float64))
                           if stats else None),
            feature_names=tuple(d.get("feature_names") or ()),
            columns=tuple(dict(c) for c in d.get("columns") or ()),
            raw=_frozen(d))

    @property
    def kind(self):
        """The modality's record (pretrainer.data.modalities): what it decides."""
        from pretrainer.data.modalities import get

        return get(self.modality)

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    def count(self, split: str) -> int:
        """Examples in `split` (0 for a split the store does not have)."""
        info = self.splits.get(split)
        return info.count if info is not None else 0

    def per_class(self, split: str = "train") -> Mapping[str, int]:
        info = self.splits.get(split)
        return info.per_class if info is not None else {}

    @property
    def example_shape(self) -> Optional[tuple[int, ...]]:
        """A model's input shape: None for text (one string per example)."""
        return self.shape if self.kind.fixed_shape else None

    @property
    def width(self) -> int:
        """Features per row of a table."""
        return self.shape[0]
