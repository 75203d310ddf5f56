"""A run's manifest.json as a typed, read-only record.

`runs.write_lineage` writes the lineage keys when a run starts and the stages add
their results with `runs.update_manifest`; every reader goes through `RunManifest`
(`runs.read_manifest`), so the keys are spelled once and a run written by an older
pretrainer (a key missing) reads with that key's empty value here, not at each reader.
The dataset store's manifest has its own record, `pretrainer.data.records.StoreManifest`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Optional


def _frozen(d: Optional[Mapping]) -> Mapping:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class RunManifest:
    """What a run is (its stage and lineage) and what it produced."""

    stage: Optional[str] = None  # pretrain | finetune | evaluate | deploy | study | sweep
    run: Optional[str] = None
    created: Optional[str] = None
    parent_run: Optional[str] = None  # the run this one was built from (absolute path)
    dataset_manifest: Optional[str] = None  # the store it read, its checksum and key
    dataset_manifest_sha256: Optional[str] = None
    dataset_key: Optional[str] = None
    versions: Mapping[str, str] = field(default_factory=dict)
    artifacts: Mapping[str, str] = field(default_factory=dict)  # file -> sha256
    # what was trained
    pretext: Optional[str] = None
    backbone: Optional[str] = None
    init: Optional[str] = None  # pretrained | scratch | public | classical
    mode: Optional[str] = None
    labels: Optional[int] = None
    semi_supervised: Optional[Any] = None
    sequence_length: Optional[int] = None
    # how it went
    epochs: Optional[int] = None
    steps: Optional[int] = None
    resumed: int = 0
    fit_seconds: Optional[float] = None
    final_metrics: Mapping[str, float] = field(default_factory=dict)
    health: Mapping[str, float] = field(default_factory=dict)
    kept: Mapping[str, Any] = field(default_factory=dict)
    export: Optional[str] = None  # deploy: the exported SavedModel (or first artifact)
    mlflow_run_id: Optional[str] = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "RunManifest":
        known = {f.name for f in fields(cls)} - {"raw"}
        values = {k: v for k, v in d.items() if k in known and v is not None}
        for key in ("versions", "artifacts", "final_metrics", "health", "kept"):
            if key in values:
                values[key] = _frozen(values[key])
        return cls(**values, raw=_frozen(d))

    @property
    def parent(self) -> Optional[Path]:
        return Path(self.parent_run) if self.parent_run else None

    def is_child_of(self, run: Path) -> bool:
        return self.parent_run == str(Path(run).resolve())
