"""Frozen-feature arms (pretrainer.frozen) and the classical model as a Keras model."""

import numpy as np
import pytest

from pretrainer import files, frozen


def _blobs(n, rng, centres, spread=0.3):
    y = np.arange(n) % len(centres)
    return (centres[y] + spread * rng.normal(size=(n, centres.shape[1]))).astype(np.float32), y


def test_label_spreading_follows_the_pool_where_labels_alone_cannot():
    """Two arcs of a circle with a small gap between them, each labeled at its far tip:
    the labels' nearest neighbour gets the end of the long arc wrong; spreading over the
    pool's kNN graph follows each arc to its end."""
    rng = np.random.default_rng(0)
    theta = np.r_[rng.uniform(0.0, 4.0, 1500), rng.uniform(4.4, 5.9, 700)]
    y = (theta > 4.2).astype(np.int64)
    x = np.c_[np.cos(theta), np.sin(theta)].astype(np.float32)
    train = np.array([np.argmin(theta), np.argmax(theta)])
    rest = np.setdiff1d(np.arange(len(x)), train)
    rng.shuffle(rest)
    pool, test = rest[:1600], rest[1600:]
    feats = {"train": (x[train], y[train]), "test": (x[test], y[test]),
             "val": (None, None), "unlabeled": (x[pool], None)}
    scores = {r["arm"]: r for r in frozen.score(feats, 2)}
    assert scores["spreading"]["accuracy"] > 0.97, scores["spreading"]["accuracy"]
    assert scores["knn"]["accuracy"] < 0.9
    assert scores["spreading"]["y_pred"].shape == (len(test),)


def test_spreading_keeps_each_class_its_share_of_the_pool():
    """Six overlapping classes of different spreads, one label each: with alpha 0.99 the
    label mass of the classes whose label sits well inside its class floods the others
    (without class mass normalisation class 5 took 106 of the 2,994 pool points and the
    accuracy was 0.77); scaled to the labeled proportions each class keeps its share."""
    rng = np.random.default_rng(1)
    k, n = 6, 3000
    centres = rng.normal(size=(k, 8)) * 1.2
    y = np.arange(n) % k
    x = centres[y] + np.linspace(0.5, 1.5, k)[y, None] * rng.normal(size=(n, 8))
    z = (x - x.mean(0)).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    labeled = np.array([np.flatnonzero(y == c)[0] for c in range(k)])
    rest = np.setdiff1d(np.arange(n), labeled)
    f = frozen.spread(frozen.neighbours(z, 10), 10, labeled, y[labeled], k)
    counts = np.bincount(f[rest].argmax(1), minlength=k)
    assert counts.min() > 0.5 * len(rest) / k, counts
    assert (f[rest].argmax(1) == y[rest]).mean() > 0.8
    np.testing.assert_allclose(f[rest].sum(1), 1.0, rtol=1e-5)


def test_class_share_comes_from_val_when_it_has_labels():
    np.testing.assert_allclose(frozen.class_share(np.array([0, 0, 0, 1]), np.array([0, 1]), 2),
                               [4 / 6, 2 / 6])
    np.testing.assert_allclose(frozen.class_share(None, np.array([0, 1, 1]), 3),
                               [2 / 6, 3 / 6, 1 / 6])


def test_settings_are_chosen_on_val_and_every_arm_scores_the_test_split():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 3
    feats = {"train": _blobs(20, rng, centres), "val": _blobs(100, rng, centres),
             "test": _blobs(200, rng, centres), "unlabeled": (_blobs(500, rng, centres)[0], None)}
    out = frozen.score(feats, 4)
    assert [r["arm"] for r in out] == list(frozen.ARMS)
    for r in out:
        assert r["accuracy"] > 0.95 and "on val" in r["chosen"], r
        assert r["samples"] == 200 and r["seconds"] >= 0


def test_neighbours_are_the_most_similar_other_rows():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(300, 8)).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    got = frozen.neighbours(z, 5)
    s = z @ z.T
    np.fill_diagonal(s, -np.inf)
    want = np.argsort(-s, axis=1)[:, :5]
    np.testing.assert_array_equal(got, want)


def test_spreading_chooses_on_val_between_the_standardised_and_the_whitened_graph():
    """600 noisy features around 4 centres (3 directions between classes, noise in all
    600): whitening would lift the noise's components to the classes' variance, so val
    keeps the standardised graph and spreading labels the blobs; narrow features and
    small pools have the standardised graph alone."""
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(4, 600))
    pool = _blobs(1200, rng, centres, spread=6.0)[0]
    feats = {"train": _blobs(8, rng, centres, spread=6.0),
             "val": _blobs(200, rng, centres, spread=6.0),
             "test": _blobs(300, rng, centres, spread=6.0), "unlabeled": (pool, None)}
    grid = frozen.spread_grid(feats["train"], pool, (feats["val"][0],), 4)
    assert set(grid) == {(space, k) for space in ("standardised", "whitened")
                         for k in frozen.GRAPH_K_GRID}
    val = {key: (parts[0].argmax(1) == feats["val"][1]).mean() for key, (_, parts)
           in grid.items()}
    assert val[("standardised", 10)] > val[("whitened", 10)] + 0.05, val
    got = {r["arm"]: r for r in frozen.score(feats, 4)}["spreading"]
    assert got["accuracy"] > 0.85 and "whitened" not in got["chosen"], got
    for narrow in (pool[:100], pool[:, :100]):  # a small pool, narrow features
        assert {space for space, _ in frozen.spread_grid(
            feats["train"] if len(narrow) == 100 else (feats["train"][0][:, :100],
                                                       feats["train"][1]),
            narrow, (), 4)} == {"standardised"}


def test_a_few_directions_of_large_variance_do_not_decide_the_neighbours(monkeypatch):
    """Ten classes apart in 9 directions, 3 other directions with far more variance that
    say nothing of the class (as a garment's brightness or size in a trunk's features):
    the cosine of the standardised features finds neighbours by those 3 and spreading
    labels about half the test points right; in the whitened components every direction
    counts alike, val chooses them, and spreading labels nearly all."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(600, 12)))[0].T
    centres = 1.5 * rng.normal(size=(10, 9)) @ basis[:9]

    def draw(n):
        y = np.arange(n) % 10
        x = (centres[y] + 6.0 * rng.normal(size=(n, 3)) @ basis[9:]
             + 0.2 * rng.normal(size=(n, 600)))
        return x.astype(np.float32), y
    monkeypatch.setattr(frozen, "GRAPH_DIM", 12)
    feats = {"train": draw(20), "val": draw(200), "test": draw(500),
             "unlabeled": (draw(2000)[0], None)}
    grid = frozen.spread_grid(feats["train"], feats["unlabeled"][0], (feats["test"][0],), 10)
    test = {key: (parts[0].argmax(1) == feats["test"][1]).mean()
            for key, (_, parts) in grid.items()}
    assert max(test[("standardised", k)] for k in frozen.GRAPH_K_GRID) < 0.75, test
    got = {r["arm"]: r for r in frozen.score(feats, 10, ("spreading",))}["spreading"]
    assert got["accuracy"] > 0.95 and "whitened" in got["chosen"], got


def test_wide_features_get_the_exact_neighbours_from_projected_candidates(monkeypatch):
    """Features with a low-dimensional structure in 600 columns (as a trunk's are): the
    projected search's candidates, re-ranked by the exact cosine, are the exact
    neighbours, where the projection alone misses some."""
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(40, 600)) * (0.85 ** np.arange(40))[:, None]  # decaying spectrum
    x = rng.normal(size=(1500, 40)) @ weights + 0.5 * rng.normal(size=(1500, 600))
    z = frozen.to_unit(x, *frozen.pool_stats(x)).astype(np.float32)
    monkeypatch.setattr(frozen, "GRAPH_DIM", 32)
    exact = frozen.neighbours(z, 10)
    fast = frozen.graph_neighbours(z, 10, z)
    projected = frozen.principal_components(z, z)
    assert projected.shape == (len(z), 32)
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), 1.0, rtol=1e-5)
    projected = frozen.neighbours(projected, 10)

    def overlap(a):
        return np.mean([len(set(p) & set(q)) / 10 for p, q in zip(a, exact, strict=True)])

    assert fast.shape == exact.shape
    assert overlap(fast) > 0.99 and overlap(projected) < 0.95, (overlap(fast),
                                                               overlap(projected))
    # narrow features and small pools: the exact search itself
    np.testing.assert_array_equal(frozen.graph_neighbours(z[:, :12], 5, z[:, :12]),
                                  frozen.neighbours(z[:, :12], 5))
    assert frozen.principal_components(z, z[:100]) is None


@pytest.mark.parametrize("shape", [(8, 8, 1), (64, 64, 3)])
def test_the_pixel_baseline_as_keras_predicts_like_scikit_learn(shape):
    from sklearn.linear_model import LogisticRegression

    from pretrainer import baselines
    from pretrainer.data.modalities.image import downsample

    rng = np.random.default_rng(0)
    x = rng.random((120, *shape)).astype(np.float32)
    y = np.arange(120) % 3
    x[y == 1, : shape[0] // 2] += 0.5
    feats = downsample(x).reshape(len(x), -1)
    est = LogisticRegression(C=1.0, max_iter=500).fit(feats, y)
    from pretrainer.data.records import StoreManifest

    manifest = {"modality": "image", "shape": list(shape), "num_classes": 4}
    model = baselines.keras_model({"accuracy": 1.0, "estimator": est},
                                  StoreManifest.from_json(manifest))
    probs = model.predict(x, verbose=0)
    assert probs.shape == (120, 4) and probs[:, 3].max() < 1e-6  # a class never labeled
    np.testing.assert_allclose(probs[:, :3], est.predict_proba(feats), atol=1e-4)
    assert baselines.keras_model({"accuracy": 1.0, "estimator": est},
                                 StoreManifest.from_json({**manifest, "modality": "tabular"})
                                 ) is None  # gradient boosting has no Keras twin


def test_the_marked_model_is_the_default_until_a_newer_run(tmp_path):
    from pretrainer import runs

    def done(name):
        p = tmp_path / "exp" / name
        p.mkdir(parents=True)
        files.atomic_write_json(p / "manifest.json", {"stage": name.split("-")[0]})
        files.atomic_write_text(p / runs.DONE, "x\n")
        return p

    a = done("finetune-20260101-000001")
    b = done("finetune-20260101-000002")
    assert runs.resolve(tmp_path, "exp", "finetune") == b  # no mark: the latest
    runs.mark_model(tmp_path, "exp", arm="pretrained", why="best val", finetune=a)
    assert runs.resolve(tmp_path, "exp", "finetune") == a
    assert runs.resolve(tmp_path, "exp", "finetune", run=b) == b  # --run still wins
    c = done("finetune-20260101-000003")  # the user finetunes again: the newer run wins
    assert runs.resolve(tmp_path, "exp", "finetune") == c


def test_a_winning_pixel_baseline_becomes_a_finetune_run_the_verbs_can_use(in_tmp):
    """pipeline._classical_run: the scikit-learn model as model.keras in a finetune run;
    evaluate scores it exactly as scikit-learn did."""
    import json

    from pretrainer import baselines
    from pretrainer.config import compose
    from pretrainer.data.sources import SourceData
    from pretrainer.data.store import build_store, read_manifest, store_path
    from pretrainer.stages import evaluate
    from pretrainer.stages.pipeline import _classical_run

    rng = np.random.default_rng(0)
    y = np.arange(600) % 3
    x = rng.integers(0, 120, (600, 28, 28, 1), dtype=np.uint8)
    x[y == 1, :14] += 120
    x[y == 2, :, :14] += 120
    cfg = compose("fashion_ae", ["data.labeled_fraction=0.05"])
    store = store_path(cfg)
    build_store(store, cfg.data, 0, SourceData(x_pool=x, y_pool=y,
                                               class_names=["a", "b", "c"]))
    manifest = read_manifest(store)
    result = baselines.fit_and_score(store, manifest)
    result["val"] = result["val_score"]
    ft = _classical_run(cfg, result, store, manifest)
    assert json.loads((ft / "manifest.json").read_text())["init"] == "classical"
    ev = evaluate.run(cfg, run=ft)
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(result["accuracy"], abs=1e-9)


def test_a_winning_tfidf_baseline_ships_as_keras_with_scikit_learns_probabilities(in_tmp):
    """The text baseline (TF-IDF word + char_wb n-grams, logistic regression) rebuilt from
    TensorFlow string ops: the same probabilities as scikit-learn on accented, mixed-case,
    oddly spaced text; evaluate scores the run as scikit-learn did; the SavedModel takes
    raw strings."""
    import json

    import tensorflow as tf

    from pretrainer import baselines
    from pretrainer.config import compose
    from pretrainer.data.sources import SourceData
    from pretrainer.data.store import build_store, read_manifest, store_path
    from pretrainer.exports import savedmodel
    from pretrainer.stages import evaluate, load_keras_artifact
    from pretrainer.stages.pipeline import _classical_run

    rng = np.random.default_rng(0)
    words = [["école", "Éclair", "crème", "brûlée"], ["straße", "Übung", "größe", "Ähre"],
             ["niño", "SEÑOR", "año", "mañana"]]
    noise = ["the", "a", "of", "and", "x1", "_id", "½", "[draft]", "v2.0"]
    texts, y = [], []
    for i in range(450):
        c = i % 3
        picks = list(rng.choice(words[c], 2)) + list(rng.choice(noise, 3))
        rng.shuffle(picks)
        sep = ["  ", "\t", "\u00a0", ", ", " – "][i % 5]
        texts.append(sep.join(picks) if i % 7 else sep.join(picks).upper())
        y.append(c)
    y = np.array(y)
    cfg = compose("text_mlm", ["data.labeled_fraction=0.1"])
    store = store_path(cfg)
    build_store(store, cfg.data, 0, SourceData(x_pool=np.array(texts, dtype=object), y_pool=y,
                                               class_names=["fr", "de", "es"],
                                               modality="text"))
    manifest = read_manifest(store)
    result = baselines.fit_and_score(store, manifest)
    result["val"] = result["val_score"]
    model = baselines.keras_model(result, manifest)
    probe = ["ÉCOLE\u00a0et  Crème", "STRASSE straße größe", "", "mañana,niño", "zzz qqq"]
    want = np.zeros((len(probe), 3))
    want[:, result["estimator"].classes_] = result["estimator"].predict_proba(probe)
    np.testing.assert_allclose(np.asarray(model(tf.constant(probe))), want, atol=1e-5)

    ft = _classical_run(cfg, result, store, manifest)
    ev = evaluate.run(cfg, run=ft)
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(result["accuracy"], abs=1e-9)
    loaded = load_keras_artifact(ft, "model.keras", None)
    export = savedmodel.export(loaded, in_tmp / "sm", manifest)
    out = tf.saved_model.load(str(export)).signatures["serving_default"](
        text=tf.constant(probe))
    np.testing.assert_allclose(out["probabilities"].numpy(), want, atol=1e-5)
    assert [c.decode() for c in out["class_name"].numpy()[:2]] == ["fr", "de"]
