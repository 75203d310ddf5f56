"""`data.split_rule=hash`: each record's split, whether its label is kept, and its place
in its split's order decided from keyed hashes of its content, so the plan can be made
while streaming over the records once per pass, holding per-class aggregates and the
test split's digests rather than one entry per record (collect on Beam: the launcher's
memory no longer grows ~0.4 KiB a record), and both collect paths write the same store
because both run this one planner (in-process over whole arrays, on Beam over the
workers' scan results, chunk by chunk).

For a record with content digest d (16 bytes, the contamination check's blake2b),
u(tag) is a 53-bit uniform in [0, 1) from (seed, tag, d). Then:

- cap (`data.max_samples`, `data.max_test`): the N records with the smallest u(cap);
- test: u(split) < test_fraction; val: the next val_fraction of that range; a class the
  range gives no test (then val) record gets the record with its smallest u(split) that
  is not already in test (the stratified rule's "at least one per class");
- labeled: among the rest, `labels_per_class` records of each class with the smallest
  u(label) (label_seed), or u(label) < labeled_fraction with at least one per class;
- order: a split of n records (before `data.dedupe`) is cut into S = ceil(n / shard_size)
  shards; a record goes to shard floor(u(order) * S), sorted by u(order) inside it, so
  shards hold shard_size records on average rather than exactly.

Exact copies (same content) share every u, so they always land in the same split: copies
never straddle test and the pretraining pool (the contamination check can still find
copies between a source's own test folder and its pool). A record's split does not depend
on its file name or on the order files are listed in. Splits are stratified only in
expectation: a class of 1,000 records gets about 100 test records, not exactly 100.
"""

from __future__ import annotations

import hashlib
import math
from typing import Optional

import numpy as np

from pretrainer.data.splits import SPLITS
from pretrainer.errors import DataError

PARTS = ("pool", "test", "val", "extra")  # where a record came from (a source's own splits)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (uint64 arithmetic wraps): every input bit moves every
    output bit, the same on every platform and numpy version."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform(digests: np.ndarray, seed: int, tag: str) -> np.ndarray:
    """[n, 16] uint8 digests -> float64 [n] in [0, 1), keyed by (seed, tag). The digest
    is already a cryptographic hash of the content; the key only has to decorrelate the
    tags and seeds, which two rounds of a 64-bit mixer do (vectorised: a per-record
    blake2b call cost ~1 s per million records)."""
    key = np.frombuffer(hashlib.blake2b(f"{int(seed)}/{tag}".encode(), digest_size=16)
                        .digest(), "<u8")
    words = np.ascontiguousarray(digests, np.uint8).reshape(-1, 16).view("<u8")
    with np.errstate(over="ignore"):
        x = _mix(words[:, 0] ^ key[0])
        x = _mix(x ^ words[:, 1] ^ key[1])
    return (x >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def as_keys(digests: np.ndarray) -> np.ndarray:
    """[n, 16] uint8 -> [n] fixed 16-byte strings (sortable, searchable)."""
    return np.ascontiguousarray(digests, np.uint8).reshape(-1, 16).view("S16").reshape(-1)


def _smallest_per_class(m: int, cls: np.ndarray, u: np.ndarray, *extra: np.ndarray):
    """The m smallest distinct u of each class (copies share u: kept once), with the
    matching entries of `extra`; vectorised (one sort), for merging chunk by chunk."""
    order = np.lexsort((u, cls))
    cls, u, extra = cls[order], u[order], [e[order] for e in extra]
    new = np.ones(len(u), bool)
    new[1:] = (cls[1:] != cls[:-1]) | (u[1:] != u[:-1])
    cls, u, extra = cls[new], u[new], [e[new] for e in extra]
    idx = np.arange(len(u))
    first = np.ones(len(u), bool)
    first[1:] = cls[1:] != cls[:-1]
    rank = idx - np.maximum.accumulate(np.where(first, idx, 0))
    keep = rank < m
    return (cls[keep], u[keep], *[e[keep] for e in extra])


class Planner:
    """The hash rule over a stream of (part, digests, strata) chunks, in passes: `cap` (only
    when `needs_cap`), `observe`, then `resolve()`, then `assign` for `tally`, then
    `finish_tally()`, then `assign` again for `place`. `strata`: class indices (zeros for
    a regression target; None for an unlabeled-only source)."""

    def __init__(self, cfg, seed: int, n_classes: int, *, has_test: bool, has_val: bool,
                 labeled: bool, regression: bool = False):
        self.cfg, self.seed, self.n_classes, self.labeled = cfg, int(seed), n_classes, labeled
        self.regression = regression
        self.label_seed = self.seed if cfg.label_seed is None else int(cfg.label_seed)
        self.tf = 0.0 if has_test or not labeled else cfg.test_fraction
        self.vf = 0.0 if has_val or not labeled else cfg.val_fraction
        self.caps = {"pool": cfg.max_samples, "test": cfg.max_test if has_test else None}
        self._cap_u: dict[str, np.ndarray] = {}
        self.cap_at = {"pool": math.inf, "test": math.inf}
        self.k = 1 if cfg.labels_per_class is None else int(cfg.labels_per_class)
        self.seen = np.zeros(n_classes, bool)
        self.has_test = np.zeros(n_classes, bool)
        empty = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0, "S16"))
        self._split_cands = empty  # (class, u(split), digest): 2 smallest u >= tf per class
        self._label_cands = (empty[0], empty[1], np.zeros(0))  # (class, u(label), u(split))
        self._test_keys: list[np.ndarray] = []
        self.counts = {s: 0 for s in SPLITS}  # before dedupe: what decides the shard count
        self.per_class = {s: np.zeros(max(n_classes, 1), np.int64) for s in SPLITS}
        self.in_test = {s: 0 for s in SPLITS if s != "test"}
        self.shards: dict[str, int] = {}

    # ------------------------------------------------------------------ cap pass
    @property
    def needs_cap(self) -> bool:
        return any(v is not None for v in self.caps.values())

    def cap(self, part: str, digests: np.ndarray) -> None:
        limit = self.caps.get(part)
        if limit is None:
            return
        u = np.concatenate([self._cap_u.get(part, np.zeros(0)),
                            uniform(digests, self.seed, "cap")])
        self._cap_u[part] = np.partition(u, limit - 1)[:limit] if len(u) > limit else u
        if len(u) >= limit:
            self.cap_at[part] = float(self._cap_u[part].max())

    def _kept(self, part: str, digests: np.ndarray) -> np.ndarray:
        if part not in self.cap_at or math.isinf(self.cap_at[part]):
            return np.ones(len(digests), bool)
        return uniform(digests, self.seed, "cap") <= self.cap_at[part]

    # -------------------------------------------------------------- observe pass
    def observe(self, part: str, digests: np.ndarray, strata: Optional[np.ndarray]) -> None:
        kept = self._kept(part, digests)
        if part == "test":
            self._test_keys.append(as_keys(digests[kept]))
        if part != "pool" or not self.labeled:
            return
        digests, cls = digests[kept], np.asarray(strata, np.int64)[kept]
        us = uniform(digests, self.seed, "split")
        self.seen[cls] = True
        test = us < self.tf
        self.has_test[cls[test]] = True
        self._test_keys.append(as_keys(digests[test]))
        upper = ~test
        c0, u0, d0 = self._split_cands
        self._split_cands = _smallest_per_class(
            2, np.concatenate([c0, cls[upper]]), np.concatenate([u0, us[upper]]),
            np.concatenate([d0, as_keys(digests[upper])]))
        rest = us >= self.tf + self.vf
        ul = uniform(digests[rest], self.label_seed, "label")
        c1, l1, s1 = self._label_cands
        self._label_cands = _smallest_per_class(
            self.k + 2, np.concatenate([c1, cls[rest]]), np.concatenate([l1, ul]),
            np.concatenate([s1, us[rest]]))

    def resolve(self) -> None:
        """Per class: the records moved into test / val by the at-least-one rule, and the
        u(label) threshold under which a rest record keeps its label."""
        if self.labeled and not self.regression and int(self.seen.sum()) < 2:
            raise DataError(f"The source gave {int(self.seen.sum())} class(es); need at least 2")
        n = max(self.n_classes, 1)
        self.forced_test, self.forced_val = np.full(n, np.nan), np.full(n, np.nan)
        self.label_at = np.full(n, -1.0)
        cls, us, keys = self._split_cands
        forced_keys = []
        for c in np.flatnonzero(self.seen):
            cand = us[cls == c]  # sorted: the class's smallest u(split) >= tf
            nxt = 0
            if self.tf > 0 and not self.has_test[c]:
                self.forced_test[c] = cand[0]
                forced_keys.append(keys[cls == c][0])
                nxt = 1
            if self.vf > 0 and not (len(cand) > nxt and cand[nxt] < self.tf + self.vf):
                self.forced_val[c] = cand[nxt] if len(cand) > nxt else np.nan
        lc, lu, ls = self._label_cands
        for c in np.flatnonzero(self.seen):
            mine = (lc == c) & (ls != self.forced_test[c]) & (ls != self.forced_val[c])
            left = lu[mine]  # sorted: the class's smallest u(label) among the rest
            if self.cfg.labels_per_class is not None:
                self.label_at[c] = left[self.k - 1] if len(left) >= self.k else np.inf
            elif len(left):
                lf = self.cfg.labeled_fraction
                self.label_at[c] = np.nextafter(lf, 0.0) if left[0] < lf else left[0]
        self.test_keys = np.unique(np.concatenate(
            [*self._test_keys, np.asarray(forced_keys, "S16"), np.zeros(0, "S16")]))
        del self._test_keys, self._split_cands, self._label_cands

    # --------------------------------------------------------------- assign passes
    def assign(self, part: str, digests: np.ndarray, strata: Optional[np.ndarray]) -> dict:
        """{split: mask} of where each record of the chunk goes before dedupe (a labeled
        record is in both `unlabeled` and `train`), and "in_test": exact copies of a test
        record."""
        n = len(digests)
        none = np.zeros(n, bool)
        kept = self._kept(part, digests)
        masks = {s: none for s in SPLITS}
        if part in ("test", "val"):
            masks[part] = kept
        elif part == "extra" or not self.labeled:
            masks["unlabeled"] = kept
        else:
            cls = np.asarray(strata, np.int64)
            us = uniform(digests, self.seed, "split")
            test = kept & ((us < self.tf) | (us == self.forced_test[cls]))
            val = kept & ~test & (((us >= self.tf) & (us < self.tf + self.vf))
                                  | (us == self.forced_val[cls]))
            rest = kept & ~test & ~val
            ul = uniform(digests, self.label_seed, "label")
            masks.update(test=test, val=val, unlabeled=rest,
                         train=rest & (ul <= self.label_at[cls]))
        keys = as_keys(digests)
        at = np.searchsorted(self.test_keys, keys)
        found = at < len(self.test_keys)
        found[found] = self.test_keys[at[found]] == keys[found]
        masks["in_test"] = found
        return masks

    def dropped(self, split: str, masks: dict) -> np.ndarray:
        """Records of `split` that data.dedupe removes (copies of a test record)."""
        if split == "test" or not self.cfg.dedupe:
            return np.zeros(len(masks[split]), bool)
        return masks[split] & masks["in_test"]

    def tally(self, masks: dict, strata: Optional[np.ndarray]) -> None:
        for split in SPLITS:
            m = masks[split]
            self.counts[split] += int(m.sum())
            if split != "test":
                self.in_test[split] += int((m & masks["in_test"]).sum())
            if strata is not None and split != "unlabeled":
                final = m & ~self.dropped(split, masks)
                self.per_class[split] += np.bincount(np.asarray(strata, np.int64)[final],
                                                     minlength=len(self.per_class[split]))

    def finish_tally(self) -> dict:
        """The shard count of each split (from its size before dedupe); the contamination
        report (as splits.check_contamination writes it)."""
        size = self.cfg.shard_size
        self.shards = {s: max(1, -(-self.counts[s] // size)) for s in SPLITS}
        return {"method": "exact bytes (blake2b)", "deduped": self.cfg.dedupe,
                **{f"{s}_in_test": self.in_test[s] for s in ("unlabeled", "train", "val")}}

    def place(self, split: str, masks: dict, digests: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(which records of the chunk `split` keeps, their shard, their u(order))."""
        keep = masks[split] & ~self.dropped(split, masks)
        u = uniform(digests[keep], self.seed, "order")
        shard = np.minimum((u * self.shards[split]).astype(np.int64), self.shards[split] - 1)
        return keep, shard, u


def plan_arrays(src, cfg, seed: int) -> tuple[dict, dict, dict]:
    """The in-process path: ({split: (x, y)} in stored order, contamination report,
    {split: records per shard}). One chunk per part: the whole arrays."""
    from pretrainer.data.splits import _hashes

    regression = src.task == "regression"
    parts = {"pool": (src.x_pool, src.y_pool)}
    for part, (x, y) in {"test": (src.x_test, src.y_test), "val": (src.x_val, src.y_val),
                         "extra": (src.x_extra, None)}.items():
        if x is not None and len(x):
            parts[part] = (x, y)
    labeled = src.y_pool is not None
    planner = Planner(cfg, seed, 1 if regression else len(src.class_names),
                      has_test="test" in parts, has_val="val" in parts, labeled=labeled,
                      regression=regression)
    chunks = {}
    for part, (x, y) in parts.items():
        digests = np.frombuffer(b"".join(_hashes(x)), np.uint8).reshape(-1, 16)
        strata = (None if y is None or not labeled else
                  np.zeros(len(x), np.int64) if regression else np.asarray(y, np.int64))
        chunks[part] = (digests, strata)
    return run_passes(planner, chunks, parts)


def run_passes(planner: Planner, chunks: dict, parts: dict) -> tuple[dict, dict, dict]:
    """The planner's passes over chunks held in memory ({part: (digests, strata)}), and
    the records of `parts` ({part: (x, y)}) put where it says."""
    if planner.needs_cap:
        for part, (digests, _) in chunks.items():
            planner.cap(part, digests)
    for part, (digests, strata) in chunks.items():
        planner.observe(part, digests, strata)
    planner.resolve()
    masks = {part: planner.assign(part, d, s) for part, (d, s) in chunks.items()}
    for part, (_, strata) in chunks.items():
        planner.tally(masks[part], strata)
    contamination = planner.finish_tally()
    arrays, cuts = {}, {}
    pool_y = parts["pool"][1]
    for split in SPLITS:
        xs, ys, shards, us = [], [], [], []
        for part, (x, y) in parts.items():
            keep, shard, u = planner.place(split, masks[part], chunks[part][0])
            xs.append(x[keep])
            if y is not None:  # (the extra unlabeled images: in no labeled split)
                ys.append(np.asarray(y)[keep])
            shards.append(shard)
            us.append(u)
        shard, u = np.concatenate(shards), np.concatenate(us)
        y = None if split == "unlabeled" or pool_y is None else np.concatenate(ys)
        tie = np.zeros(len(u)) if y is None else y
        order = np.lexsort((tie, u, shard))
        arrays[split] = (np.concatenate(xs)[order], None if y is None else y[order])
        cuts[split] = np.bincount(shard, minlength=planner.shards[split]).tolist()
    return arrays, contamination, cuts
