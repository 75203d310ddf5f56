import numpy as np
import pytest

from pretrainer.config import DataConfig
from pretrainer.data import pipeline
from pretrainer.data.sources import SourceData, get_source
from pretrainer.data.splits import make_splits
from pretrainer.data.store import build_store, read_manifest, verify
from pretrainer.errors import DataError


def _labels(n_per_class=100, classes=5):
    return np.repeat(np.arange(classes), n_per_class)


def test_splits_are_disjoint_stratified_and_deterministic():
    y = _labels()
    cfg = DataConfig(labeled_fraction=0.1, val_fraction=0.2, test_fraction=0.2)
    s1 = make_splits(y, cfg, seed=3, has_test=False)
    s2 = make_splits(y, cfg, seed=3, has_test=False)
    for k in s1:
        np.testing.assert_array_equal(s1[k], s2[k])
    # no leakage: test and val never appear in the pretraining pool or the labeled train set
    for held in ("test", "val"):
        assert not set(s1[held]) & set(s1["unlabeled"])
        assert not set(s1[held]) & set(s1["train"])
    assert not set(s1["test"]) & set(s1["val"])
    assert set(s1["train"]) <= set(s1["unlabeled"])
    # stratified: every class gets the same share of labels
    counts = np.bincount(y[s1["train"]], minlength=5)
    assert (counts == counts[0]).all() and counts[0] == 6  # 10% of the 60 left per class
    assert len(s1["test"]) == 100 and len(s1["val"]) == 80
    s3 = make_splits(y, cfg, seed=4, has_test=False)
    assert not np.array_equal(s1["train"], s3["train"])


def test_labels_per_class_overrides_fraction():
    y = _labels()
    s = make_splits(y, DataConfig(labels_per_class=3, val_fraction=0.0), seed=0, has_test=True)
    assert np.bincount(y[s["train"]]).tolist() == [3] * 5
    assert "test" not in s and len(s["val"]) == 0 and len(s["unlabeled"]) == 500


def test_store_round_trip_reads_back_exactly_what_was_written(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(120, 6, 5, 3), dtype=np.uint8)
    y = np.repeat(np.arange(3), 40)
    src = SourceData(x_pool=x, y_pool=y, class_names=["a", "b", "c"],
                     x_test=x[:30], y_test=y[:30])
    cfg = DataConfig(name="toy", labeled_fraction=0.5, val_fraction=0.1, shard_size=25)
    manifest = build_store(tmp_path / "toy", cfg, seed=1, src=src)
    assert manifest.shape == (6, 5, 3)
    assert manifest.count("unlabeled") == 108
    assert len(manifest.splits["unlabeled"].shards) == 5
    assert verify(tmp_path / "toy") == []
    xs, ys = pipeline.to_numpy(pipeline.images(tmp_path / "toy", "test", batch_size=7))
    # the same examples and labels, written in a seeded random order
    order = sorted(range(30), key=lambda i: (xs[i] * 255).round().astype(np.uint8).tobytes())
    want = sorted(range(30), key=lambda i: x[i].tobytes())
    np.testing.assert_allclose(xs[order], x[want].astype(np.float32) / 255.0)
    np.testing.assert_array_equal(ys[order], y[want])
    unl = np.concatenate(list(pipeline.images(tmp_path / "toy", "unlabeled", batch_size=16,
                                              labels=False).as_numpy_iterator()))
    assert unl.shape == (108, 6, 5, 3)
    # a corrupted shard is detected by its checksum
    shard = tmp_path / "toy" / manifest.splits["train"].shards[0].file
    shard.write_bytes(shard.read_bytes()[:-3])
    assert verify(tmp_path / "toy") == [shard.name]


def test_missing_store_and_unlabeled_split_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="pretrainer collect"):
        read_manifest(tmp_path / "nothing")


def test_unknown_source_lists_valid_ones():
    with pytest.raises(DataError, match="bundled, keras, idx, sklearn"):
        get_source("s3_bucket")


def test_bundled_sample_is_real_fashion_mnist():
    src = get_source("bundled")(DataConfig())
    assert src.x_pool.shape == (6000, 28, 28, 1) and src.x_test.shape == (1000, 28, 28, 1)
    assert np.bincount(src.y_pool).tolist() == [600] * 10
    assert src.class_names[0] == "t-shirt/top"


def test_offline_keras_dataset_fails_with_alternatives(monkeypatch, tmp_path):
    import keras

    def offline(*a, **k):
        raise Exception("URL fetch failure on https://example: [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(DataError) as err:
        get_source("keras")(DataConfig(source="keras", dataset="cifar10"))
    msg = str(err.value)
    assert "cifar10" in msg and "bundled" in msg and "~/.keras/datasets" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("dedupe", [False, True])
def test_contamination_check_finds_a_planted_duplicate(tmp_path, dedupe):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(60, 4, 4, 1), dtype=np.uint8)
    y = np.repeat(np.arange(3), 20)
    x_test = rng.integers(0, 256, size=(9, 4, 4, 1), dtype=np.uint8)
    x_test[4] = x[10]  # a training image leaked into the test set
    x_test[7] = x[31]
    src = SourceData(x_pool=x, y_pool=y, class_names=["a", "b", "c"], x_test=x_test,
                     y_test=np.arange(9) % 3)
    cfg = DataConfig(labeled_fraction=1.0, val_fraction=0.0, dedupe=dedupe)
    m = build_store(tmp_path / "s", cfg, seed=0, src=src)
    assert m.contamination["unlabeled_in_test"] == 2
    assert m.contamination["train_in_test"] == 2
    expected = 58 if dedupe else 60
    assert m.count("unlabeled") == expected
    assert m.count("train") == expected


def test_interrupted_collect_resumes_and_never_publishes_a_partial_store(tmp_path, monkeypatch):
    from pretrainer.data import store as store_mod

    rng = np.random.default_rng(0)
    src = SourceData(x_pool=rng.integers(0, 256, size=(200, 4, 4, 1), dtype=np.uint8),
                     y_pool=np.repeat(np.arange(4), 50), class_names=list("abcd"))
    cfg = DataConfig(shard_size=20, val_fraction=0.1, test_fraction=0.2, labeled_fraction=0.5)
    real, calls = store_mod._example, {"n": 0}

    def dies_after_70(*a, **k):
        calls["n"] += 1
        if calls["n"] > 70:
            raise KeyboardInterrupt  # the user pressed Ctrl-C, or the machine went down
        return real(*a, **k)

    monkeypatch.setattr(store_mod, "_example", dies_after_70)
    with pytest.raises(KeyboardInterrupt):
        build_store(tmp_path / "s", cfg, seed=0, src=src)
    assert not (tmp_path / "s").exists()  # nothing published
    (staging,) = tmp_path.glob(".s.partial-*")
    finished = {p.name: p.stat().st_mtime_ns for p in staging.glob("*.tfrecord")}
    assert len(finished) == 3  # 3 whole shards of 20; the 4th was cut short and not kept

    monkeypatch.setattr(store_mod, "_example", real)
    resumed = []
    m = build_store(tmp_path / "s", cfg, seed=0, src=src,
                    progress=lambda what, n: resumed.append(n) if what == "resume" else None)
    assert resumed == [3]
    for name, mtime in finished.items():
        assert (tmp_path / "s" / name).stat().st_mtime_ns == mtime  # kept, not rewritten
    assert verify(tmp_path / "s") == [] and not list(tmp_path.glob(".s.partial-*"))
    fresh = build_store(tmp_path / "fresh", cfg, seed=0, src=src)
    assert [sh.sha256 for sp in m.splits.values() for sh in sp.shards] == \
        [sh.sha256 for sp in fresh.splits.values() for sh in sp.shards]


def test_store_on_a_tensorflow_filesystem(tmp_path):
    """The store goes through tf.io.gfile: ram:// here stands in for gs://."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(90, 4, 4, 1), dtype=np.uint8)
    y = np.repeat(np.arange(3), 30)
    src = SourceData(x_pool=x, y_pool=y, class_names=list("abc"))
    cfg = DataConfig(shard_size=16, labeled_fraction=0.5)
    m = build_store("ram://stores/toy", cfg, seed=0, src=src)
    assert verify("ram://stores/toy") == []
    assert read_manifest("ram://stores/toy").config_key == m.config_key
    xs, ys = pipeline.to_numpy(pipeline.images("ram://stores/toy", "test", batch_size=8))
    assert len(xs) == m.count("test") and set(ys) <= {0, 1, 2}
    again = build_store("ram://stores/toy", cfg, seed=0, src=src)  # rebuild in place
    assert again.splits == m.splits
