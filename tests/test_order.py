"""Class-sorted sources, shuffled stores, and readers whose order depends on (seed, pass)."""

import numpy as np
import pytest
import tensorflow as tf

from pretrainer.config import DataConfig
from pretrainer.data import pipeline
from pretrainer.data.sources import SourceData
from pretrainer.data.store import build_store

CLASSES = 4


@pytest.fixture(scope="module")
def sorted_store(tmp_path_factory):
    """24,000 tiny images sorted by class (the layout of class folders), more than two
    shuffle blocks and 24 shards: what broke training when stores kept the source order."""
    n = 24_000
    y = np.repeat(np.arange(CLASSES), n // CLASSES)
    x = np.zeros((n, 4, 4, 1), np.uint8)
    x[:, 0, 0, 0] = y  # the label is readable from the pixels
    x[:, 1, :, 0] = (np.arange(n)[:, None] >> np.arange(4) * 4) & 15  # and the index
    src = SourceData(x_pool=x, y_pool=y, class_names=[f"c{i}" for i in range(CLASSES)],
                     x_test=x[:400], y_test=y[:400])
    cfg = DataConfig(name="sorted", labeled_fraction=1.0, val_fraction=0.0, shard_size=1000)
    path = tmp_path_factory.mktemp("stores") / "sorted"
    build_store(path, cfg, seed=0, src=src)
    return path


def _labels_of(batches):
    return [np.round(b[0][:, 0, 0, 0] * 255).astype(int) if isinstance(b, tuple)
            else np.round(b[:, 0, 0, 0] * 255).astype(int) for b in batches]


def test_store_is_written_in_random_order_whatever_the_source_order(sorted_store):
    xs, ys = pipeline.to_numpy(pipeline.images(sorted_store, "train", batch_size=500))
    changes = int((np.diff(ys) != 0).sum())
    assert changes > 0.5 * len(ys)  # class order would give 3 changes; i.i.d. ~75%


@pytest.mark.parametrize("cache", [False, True])
def test_every_window_of_batches_has_the_split_class_frequencies(sorted_store, cache):
    ds = pipeline.images(sorted_store, "train", batch_size=64, shuffle=True, repeat=True,
                         cache=cache, seed=3)
    steps = 24_000 // 64
    batches = list(ds.take(2 * steps).as_numpy_iterator())  # two passes
    labels = _labels_of(batches)
    per_batch = np.stack([np.bincount(lab, minlength=CLASSES) / len(lab) for lab in labels])
    # i.i.d. batches of 64 at p=0.25: per-class frequency sd 0.054; windows of 10 batches 0.017
    assert np.abs(per_batch - 0.25).max() < 0.3
    windows = per_batch[: len(per_batch) // 10 * 10].reshape(-1, 10, CLASSES).mean(1)
    assert np.abs(windows - 0.25).max() < 0.1
    # each pass sees every example once, in a new order
    idx = [(np.round(b[:, 1, :, 0] * 255).astype(int) << np.arange(4) * 4).sum(1)
           for b in (x for x, _ in batches)]
    flat = np.concatenate(idx)
    first = flat[:24_000]
    assert sorted(first) == list(range(24_000))
    assert not np.array_equal(first[:1000], flat[24_000:25_000])


@pytest.mark.parametrize("cache", [False, True])
def test_a_stream_started_at_batch_k_is_the_tail_of_the_full_stream(sorted_store, cache):
    """What exact resume rests on: order and augmentation depend on (seed, batch) only."""
    kw = dict(batch_size=64, shuffle=True, repeat=True, cache=cache, seed=5,
              augment="shift_flip")
    full = list(pipeline.images(sorted_store, "train", **kw).take(400).as_numpy_iterator())
    k = 370  # past the end of the first pass (375 batches of 64 = 24,000)
    tail = list(pipeline.images(sorted_store, "train", start_batch=k, **kw)
                .take(30).as_numpy_iterator())
    for (xa, ya), (xb, yb) in zip(full[k:], tail, strict=True):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)


def test_a_cached_pass_is_the_documented_permutation_of_the_stored_order(sorted_store):
    """A cached split's pass p is the stored order permuted by stateless_shuffle(range(n),
    fold_in((seed, p), 0)): pinned, so a run resumed by a later version of pretrainer
    (which gathers batches from one copy of the split) still sees the same batches."""
    xs, ys = pipeline.to_numpy(pipeline.images(sorted_store, "train", batch_size=1000))
    n, seed, bs = len(ys), 7, 96
    expected = []
    for p in range(2):
        pass_seed = tf.constant([seed, p], tf.int64)
        expected.append(tf.random.experimental.stateless_shuffle(
            tf.range(n), seed=tf.random.experimental.stateless_fold_in(
                pass_seed, tf.constant(0, tf.int64))).numpy())
    order = np.concatenate(expected)
    k = n // bs - 1  # the batch that straddles the end of the first pass
    got = list(pipeline.images(sorted_store, "train", batch_size=bs, shuffle=True, repeat=True,
                               seed=seed, start_batch=k).take(3).as_numpy_iterator())
    for j, (x, y) in enumerate(got):
        rows = order[(k + j) * bs:(k + j + 1) * bs]
        np.testing.assert_array_equal(y, ys[rows])
        np.testing.assert_array_equal(x, xs[rows])


def test_a_store_of_the_old_format_is_rebuilt_not_reused(tmp_path, capsys):
    import json

    from pretrainer.config import compose
    from pretrainer.stages.collect import ensure_store

    cfg = compose("fashion_ae", [f"paths.data={tmp_path}", "data.max_samples=600"])
    store = ensure_store(cfg)
    manifest_file = tmp_path / cfg.data.name / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    assert manifest["format_version"] == 2
    manifest.update(format_version=1, config_key="0123456789abcdef")  # a store of format 1
    manifest_file.write_text(json.dumps(manifest))
    assert ensure_store(cfg) == store
    assert "store format 1" in capsys.readouterr().out
    assert json.loads(manifest_file.read_text())["format_version"] == 2


def test_stores_for_other_configs_live_side_by_side_and_runs_keep_theirs(tmp_path):
    import json

    from pretrainer import runs
    from pretrainer.config import compose
    from pretrainer.errors import RunError
    from pretrainer.stages import trained_store
    from pretrainer.stages.collect import ensure_store

    a = compose("fashion_ae", [f"paths.data={tmp_path}", "data.max_samples=600"])
    b = compose("fashion_ae", [f"paths.data={tmp_path}", "data.max_samples=700"])
    store_a = ensure_store(a)
    before = (tmp_path / a.data.name / "manifest.json").read_bytes()
    run = runs.new_run_dir(tmp_path / "runs", "x", "finetune")
    runs.write_lineage(run, "finetune", "cfg", dataset_manifest=f"{store_a}/manifest.json")
    store_b = ensure_store(b)
    assert store_b != store_a and "@" in store_b  # beside it, not over it
    assert (tmp_path / a.data.name / "manifest.json").read_bytes() == before
    assert trained_store(run, store_b) == store_a  # evaluate/deploy read the run's own store
    manifest = json.loads(before)
    manifest["config_key"] = "another"  # the run's store rebuilt for another config
    (tmp_path / a.data.name / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunError, match="rebuilt since for another data config"):
        trained_store(run, store_b)


def test_static_batches_make_every_repeated_batch_whole(sorted_store):
    """The TPU rule: with static batches on, repeated streams have a static batch dimension
    and an unshuffled pass drops its partial last batch; a split smaller than one batch is a
    clear error; fit refuses an input whose shapes are still dynamic."""
    from pretrainer.errors import DataError
    from pretrainer.train import TrainingError
    from pretrainer.train.loop import _require_static

    pipeline.set_static_batches(True)
    try:
        n = pipeline.split_info(sorted_store, "test").count
        bs = 7 if n % 7 else 11
        for shuffle in (False, True):
            ds = pipeline.images(sorted_store, "test", batch_size=bs, shuffle=shuffle,
                                 repeat=True, cache=False)
            assert ds.element_spec[0].shape[0] == bs and ds.element_spec[1].shape[0] == bs
            assert all(len(y) == bs for _, y in ds.take(3 * (n // bs) + 2))
        assert pipeline.steps(sorted_store, "test", bs) == n // bs
        with pytest.raises(DataError, match="fewer than one batch"):
            pipeline.steps(sorted_store, "test", n + 1)
        with pytest.raises(TrainingError, match="dynamic shapes"):
            _require_static("pretrain", "training", tf.data.Dataset.range(10).batch(3))
    finally:
        pipeline.set_static_batches(False)


def test_a_store_whose_manifest_was_cut_is_collected_again(tmp_path, capsys):
    """A full disk or a kill can cut manifest.json; the error said 'rerun pretrainer
    collect' and collect then failed on the same file."""
    import json

    from pretrainer.config import compose
    from pretrainer.stages import collect

    cfg = compose("fashion_ae", [f"paths.data={tmp_path}", "data.max_samples=600"])
    store = collect.ensure_store(cfg)
    manifest_file = tmp_path / cfg.data.name / "manifest.json"
    good = json.loads(manifest_file.read_text())
    manifest_file.write_text(manifest_file.read_text()[:100])
    assert collect.run(cfg) == store
    assert "cannot be read" in " ".join(capsys.readouterr().out.split())
    assert json.loads(manifest_file.read_text())["splits"] == good["splits"]
    manifest_file.write_text("")  # and through a stage that needs the store
    assert collect.ensure_store(cfg) == store
    assert json.loads(manifest_file.read_text())["config_key"] == good["config_key"]


def test_a_stage_without_the_data_path_names_the_paths_that_built_the_stores(tmp_path):
    """`pretrain` without the `data.path=` that `collect` had: one line that names it,
    instead of "collecting it first" and then "needs data.path"."""
    import numpy as np
    import pytest
    from PIL import Image

    from pretrainer.config import compose
    from pretrainer.errors import DataError
    from pretrainer.stages.collect import ensure_store

    photos = tmp_path / "photos [2026]"
    for name, value in (("cats", 40), ("dogs", 200)):
        (photos / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((8, 8), value + i, np.uint8)).save(photos / name / f"{i}.png")
    common = [f"paths.data={tmp_path / 'data'}", "data.image_size=[8,8]"]
    ensure_store(compose("folder_ae", [*common, f"data.path='{photos}'"]))
    with pytest.raises(DataError, match=r"needs data.path=DIR .* built with "
                                        rf"data.path='{tmp_path}/photos \[2026\]'"):
        ensure_store(compose("folder_ae", common))
