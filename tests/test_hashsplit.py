"""data.split_rule=hash: splits and order from keyed hashes of each record's content
(pretrainer/data/hashsplit.py), planned chunk by chunk as collect on Beam streams."""

import dataclasses

import numpy as np
import pytest

from pretrainer.config import DataConfig
from pretrainer.data import hashsplit
from pretrainer.data.sources import SourceData
from pretrainer.errors import DataError


def _source(n_per_class=(400, 300, 5, 1), copies=0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)]).astype(np.int64)
    x = rng.integers(0, 255, (len(y), 4, 4, 1), dtype=np.uint8)
    if copies:  # exact copies of the first records, same label
        x, y = np.concatenate([x, x[:copies]]), np.concatenate([y, y[:copies]])
    return SourceData(x_pool=x, y_pool=y, class_names=[f"c{i}" for i in range(len(n_per_class))])


def _cfg(**kw):
    return DataConfig(split_rule="hash", shard_size=64, **kw)


def _plan(src, cfg, seed=3):
    return hashsplit.plan_arrays(src, cfg, seed)


def test_the_hash_of_a_record_is_fixed():
    """Stores must not move between releases: u(tag) of a known digest, pinned."""
    d = np.frombuffer(bytes(range(16)), np.uint8).reshape(1, 16)
    assert hashsplit.uniform(d, 42, "split")[0] == pytest.approx(0.1978593781, abs=1e-9)
    u = hashsplit.uniform(np.random.default_rng(0).integers(0, 256, (20000, 16), np.uint8),
                          1, "order")
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01


def test_every_class_is_in_test_and_val_and_shares_are_near_the_fractions():
    arrays, _, cuts = _plan(_source(), _cfg(test_fraction=0.2, val_fraction=0.1))
    for split in ("test", "val"):
        assert set(np.unique(arrays[split][1])) == {0, 1, 2, 3} - ({3} if split == "val" else set())
    test_big = (arrays["test"][1] == 0).sum()
    assert 50 < test_big < 110  # ~80 of 400, in expectation only
    n = sum(len(arrays[s][0]) for s in ("unlabeled", "val", "test"))
    assert n == 706  # nothing lost, nothing twice
    assert sum(cuts["unlabeled"]) == len(arrays["unlabeled"][0])
    assert len(cuts["unlabeled"]) == -(-len(arrays["unlabeled"][0]) // 64)


def test_labels_per_class_keeps_that_many_and_label_seed_moves_only_them():
    src = _source()
    a, _, _ = _plan(src, _cfg(labels_per_class=4))
    counts = np.bincount(a["train"][1], minlength=4)
    assert counts[0] == counts[1] == 4 and 1 <= counts[2] <= 4
    b, _, _ = _plan(src, _cfg(labels_per_class=4, label_seed=99))
    for split in ("unlabeled", "val", "test"):
        assert np.array_equal(a[split][0], b[split][0])
    assert not np.array_equal(a["train"][0], b["train"][0])
    c, _, _ = _plan(src, _cfg(labels_per_class=4), seed=4)  # split seed: everything moves
    assert not np.array_equal(a["test"][0], c["test"][0])


def test_copies_land_together_and_never_straddle_test_and_the_pool():
    src = _source(copies=200)
    arrays, contamination, _ = _plan(src, _cfg())
    assert contamination["unlabeled_in_test"] == 0 and contamination["val_in_test"] == 0
    test = {r.tobytes() for r in arrays["test"][0]}
    assert not any(r.tobytes() in test for r in arrays["unlabeled"][0])


def test_the_order_inside_a_split_does_not_follow_the_source_order():
    arrays, _, _ = _plan(_source((3000, 3000)), _cfg())
    y = arrays["train"][1]
    runs = np.count_nonzero(np.diff(arrays["val"][1]))
    assert runs > 100 and len(y) > 0  # classes interleaved, not one block after another


def test_chunked_passes_equal_one_pass_and_hold_per_class_state_only():
    """Collect on Beam feeds the planner chunk by chunk: the plan is the same, and what the
    planner keeps between passes does not grow with the records."""
    src = _source((4000, 3000, 50), copies=100)
    cfg = _cfg(labels_per_class=3, max_samples=6000, dedupe=True)
    whole, _, _ = _plan(src, cfg)
    digests = np.frombuffer(b"".join(hashsplit_digests(src.x_pool)), np.uint8).reshape(-1, 16)
    planner = hashsplit.Planner(cfg, 3, 3, has_test=False, has_val=False, labeled=True)
    chunks = [(digests[i:i + 500], src.y_pool[i:i + 500]) for i in range(0, len(digests), 500)]
    for d, _ in chunks:
        planner.cap("pool", d)
    for d, s in chunks:
        planner.observe("pool", d, s)
        assert len(planner._split_cands[0]) <= 2 * 3 and len(planner._label_cands[0]) <= 5 * 3
    planner.resolve()
    for d, s in chunks:
        planner.tally(planner.assign("pool", d, s), s)
    planner.finish_tally()
    for split in ("unlabeled", "train", "test"):
        picked = []
        for i, (d, s) in enumerate(chunks):
            keep, shard, u = planner.place(split, planner.assign("pool", d, s), d)
            picked += [(sh, uu, src.x_pool[i * 500 + j].tobytes())
                       for j, sh, uu in zip(np.flatnonzero(keep), shard, u,
                                                       strict=True)]
        picked.sort(key=lambda t: (t[0], t[1]))
        assert [p[2] for p in picked] == [r.tobytes() for r in whole[split][0]], split
    assert sum(len(whole[s][0]) for s in ("unlabeled", "val", "test")) <= 6000 + 100


def hashsplit_digests(x):
    from pretrainer.data.splits import _hashes

    return _hashes(x)


def test_a_source_test_split_is_kept_and_capped():
    src = dataclasses.replace(_source((300, 300)), x_test=_source((50, 50), seed=1).x_pool,
                              y_test=np.repeat([0, 1], 50))
    arrays, _, _ = _plan(src, _cfg(max_test=30))
    assert 25 <= len(arrays["test"][0]) <= 30
    assert {r.tobytes() for r in arrays["test"][0]} <= {r.tobytes() for r in src.x_test}


def test_one_class_is_refused_as_the_stratified_rule_refuses_it():
    src = SourceData(x_pool=np.arange(40, dtype=np.uint8).reshape(40, 1), y_pool=np.zeros(40, np.int64),
                     class_names=["only", "none"])
    with pytest.raises(DataError, match="1 class"):
        _plan(src, _cfg())
