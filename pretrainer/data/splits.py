"""How a source's examples are split: the pretraining pool, the few kept labels, val
and test, by stratified seeded draws (`make_splits`), exact duplicates of test examples
found (and dropped with data.dedupe), and each split put in a seeded random order.
`store.build_store` writes what these return.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Optional

import numpy as np

from pretrainer.config import DataConfig
from pretrainer.errors import DataError

SPLITS = ("unlabeled", "train", "val", "test")


def _stratified_take(labels: np.ndarray, idx: np.ndarray, rng: np.random.Generator, *,
                     fraction: Optional[float] = None, per_class: Optional[int] = None
                     ) -> np.ndarray:
    """Pick `fraction` (or `per_class`) of each class among positions `idx`; at least one each."""
    picked = []
    for c in np.unique(labels[idx]):
        members = idx[labels[idx] == c]
        members = members[rng.permutation(len(members))]
        if per_class is not None:
            k = min(per_class, len(members))
        else:
            k = max(1, int(round(fraction * len(members)))) if fraction > 0 else 0
        picked.append(members[:k])
    return np.sort(np.concatenate(picked)) if picked else np.array([], dtype=np.int64)


def make_splits(y_pool: np.ndarray, cfg: DataConfig, seed: int, has_test: bool
                ) -> dict[str, np.ndarray]:
    """Indices into the pool for each split; deterministic for (labels, cfg, seed).

    test (only without a source test split) is held out first, then val; `train`
    is a stratified subset of what remains, and `unlabeled` is all of what
    remains (the labeled examples are part of the pretraining pool, as in the
    usual semi-supervised protocol). Test and val never reach `unlabeled`.
    """
    rng = np.random.default_rng(seed)
    rest = np.arange(len(y_pool))
    splits: dict[str, np.ndarray] = {}
    if not has_test:
        splits["test"] = _stratified_take(y_pool, rest, rng, fraction=cfg.test_fraction)
        rest = np.setdiff1d(rest, splits["test"])
    if cfg.val_fraction > 0:
        splits["val"] = _stratified_take(y_pool, rest, rng, fraction=cfg.val_fraction)
        rest = np.setdiff1d(rest, splits["val"])
    else:
        splits["val"] = np.array([], dtype=np.int64)
    # label_seed redraws only the labeled subset: test, val and the pool stay put
    label_rng = rng if cfg.label_seed is None else np.random.default_rng(cfg.label_seed)
    if cfg.labels_per_class is not None:
        splits["train"] = _stratified_take(y_pool, rest, label_rng, per_class=cfg.labels_per_class)
    else:
        splits["train"] = _stratified_take(y_pool, rest, label_rng, fraction=cfg.labeled_fraction)
    splits["unlabeled"] = rest
    return splits


def _cap(x: np.ndarray, y: np.ndarray, limit: Optional[int], seed: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """Stratified cap for tiny runs (data.max_samples / data.max_test)."""
    if limit is None or len(y) <= limit:
        return x, y
    rng = np.random.default_rng(seed + 7)
    idx = _stratified_take(y, np.arange(len(y)), rng, fraction=limit / len(y))[:limit]
    return x[idx], y[idx]


def _row_bytes(row) -> bytes:
    return row.encode("utf-8") if isinstance(row, str) else np.asarray(row).tobytes()


def digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=16).digest()


def _hashes(x: np.ndarray) -> list[bytes]:
    return [digest(_row_bytes(row)) for row in x]


def check_contamination(arrays: dict, dedupe: bool, digests=_hashes) -> dict:
    """Exact duplicates of test examples in the pretraining pool, train and val.

    Reported in the manifest; with `dedupe` they are removed from those splits
    (in place in `arrays`), so the test score is not inflated by memorisation.
    `digests`: rows -> their content digests (collect on Beam passes record numbers
    and looks up the digests its workers computed).
    """
    test = set(digests(arrays["test"][0]))
    report = {"method": "exact bytes (blake2b)", "deduped": dedupe}
    for split in ("unlabeled", "train", "val"):
        x, y = arrays[split]
        dup = np.array([h in test for h in digests(x)], dtype=bool)
        report[f"{split}_in_test"] = int(dup.sum())
        if dedupe and dup.any():
            arrays[split] = (x[~dup], None if y is None else y[~dup])
    return report


def split_arrays(src, cfg: DataConfig, seed: int) -> dict:
    """{split: (x, y)} from a SourceData, following the split rules of make_splits."""
    empty = src.x_pool[:0]
    regression = src.task == "regression"
    if src.y_pool is None:  # unlabeled-only: everything goes to the pretraining pool
        x_pool = src.x_pool if cfg.max_samples is None else src.x_pool[:cfg.max_samples]
        none = np.zeros(0, np.int64)
        return {"unlabeled": (x_pool, None), "train": (empty, none),
                "val": (empty, none), "test": (empty, none)}
    # regression targets are split at random: one pseudo-class
    strata = np.zeros(len(src.y_pool), np.int64) if regression else src.y_pool
    order = np.arange(len(src.y_pool))
    kept, _ = _cap(order, strata, cfg.max_samples, seed)
    x_pool, y_pool, strata = src.x_pool[kept], src.y_pool[kept], strata[kept]
    has_test = src.x_test is not None and len(src.x_test) > 0
    has_val = src.x_val is not None and len(src.x_val) > 0
    if not regression and len(np.unique(y_pool)) < 2:
        raise DataError(f"The source gave {len(np.unique(y_pool))} class(es); need at least 2")
    split_cfg = cfg if not has_val else dataclasses.replace(cfg, val_fraction=0.0)
    idx = make_splits(strata, split_cfg, seed, has_test)
    if has_test:
        t_strata = np.zeros(len(src.y_test), np.int64) if regression else src.y_test
        t_kept, _ = _cap(np.arange(len(src.y_test)), t_strata, cfg.max_test, seed)
        test = (src.x_test[t_kept], src.y_test[t_kept])
    else:
        test = (x_pool[idx["test"]], y_pool[idx["test"]])
    return {
        "unlabeled": (x_pool[idx["unlabeled"]], None),
        "train": (x_pool[idx["train"]], y_pool[idx["train"]]),
        "val": ((src.x_val, src.y_val) if has_val
                else (x_pool[idx["val"]], y_pool[idx["val"]])),
        "test": test,
    }


def shuffled(arrays: dict, seed: int) -> dict:
    """Each split in a seeded random permutation, whatever order the source had.

    Sources arrive sorted (class folders one after another, CSVs by date); a split
    written that way gives a reader's bounded shuffle buffer long runs of one class.
    Written shuffled, any window of records is an i.i.d.-like sample of the split.
    """
    out = {}
    for i, split in enumerate(SPLITS):
        x, y = arrays[split]
        perm = np.random.default_rng([seed, 7919, i]).permutation(len(x))
        out[split] = (x[perm], None if y is None else y[perm])
    return out
