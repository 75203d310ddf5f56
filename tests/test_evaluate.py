import numpy as np
from sklearn import metrics as skm

from pretrainer.stages.evaluate import classification_metrics, regression_metrics


def test_classification_metrics_agree_with_sklearn_on_planted_predictions():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 20)
    probs = rng.random((120, 6))
    probs[np.arange(120)[:80], y[:80]] += 2.0  # two thirds right
    probs /= probs.sum(axis=1, keepdims=True)
    m = classification_metrics(y, probs, [f"c{i}" for i in range(6)])
    pred = probs.argmax(1)
    assert m["accuracy"] == skm.accuracy_score(y, pred)
    assert m["f1_macro"] == skm.f1_score(y, pred, average="macro")
    assert m["top5_accuracy"] == skm.top_k_accuracy_score(y, probs, k=5)
    assert m["roc_auc_ovr"] == skm.roc_auc_score(y, probs, multi_class="ovr")
    assert np.array_equal(m["confusion_matrix"], skm.confusion_matrix(y, pred))


def test_regression_metrics():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.5, 2.5]))
    assert m["mse"] == 0.5 / 3 * 1.0 and m["mae"] == 1.0 / 3
    assert m["r2"] == skm.r2_score([1, 2, 3], [1, 2.5, 2.5])


def test_majority_rate_is_the_labeled_splits_most_frequent_class_on_these_examples():
    import numpy as np

    from pretrainer.data.records import StoreManifest
    from pretrainer.stages.evaluate import majority_rate

    manifest = {"modality": "image", "class_names": ["a", "b", "c"],
                "splits": {"train": {"per_class": {"a": 2, "b": 5, "c": 1}}}}
    assert majority_rate(np.array([1, 1, 0, 2]), StoreManifest.from_json(manifest)) == 0.5
    manifest["splits"]["train"]["per_class"] = {}
    assert majority_rate(np.array([2, 2, 2, 0]), StoreManifest.from_json(manifest)) == 0.75


def test_evaluate_shows_the_classical_baseline_scored_on_the_same_examples(tmp_path):
    import json

    from pretrainer import runs
    from pretrainer.stages.evaluate import _classical_beside

    store = tmp_path / "manifest.json"
    store.write_text("{}")

    def run(stage, parent=None, **fields):
        path = runs.new_run_dir(tmp_path, "exp", stage)
        runs.write_lineage(path, stage, "seed: 0\n", parent=parent, dataset_manifest=store)
        runs.update_manifest(path, **fields)
        return path

    classical = run("finetune", init="classical", mode="logistic regression on pixels")
    runs.mark_done(classical)
    ev = run("evaluate", parent=classical)
    (ev / "metrics.json").write_text(json.dumps({"split": "test", "accuracy": 0.511}))
    runs.mark_done(ev)
    mine = run("evaluate", parent=run("finetune", init="pretrained"))
    found = _classical_beside(mine, {"init": "pretrained", "split": "test", "accuracy": 0.6})
    assert found == {"mode": "logistic regression on pixels", "score": 0.511}
    assert _classical_beside(mine, {"init": "pretrained", "split": "val", "accuracy": 0.6}) \
        is None  # scored on other examples: not comparable
    assert _classical_beside(ev, {"init": "classical", "split": "test"}) is None
