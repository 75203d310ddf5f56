"""The strongest simple baseline a practitioner would try first, on a store's splits.

Fitted on the labeled `train` split, its regularisation chosen on `val` when there is
one, scored on `test`, the same examples every deep arm is scored on:

- text: TF-IDF of word 1-2-grams and character 2-5-grams (within words), logistic
  regression;
- tables: scikit-learn's HistGradientBoosting (classifier or regressor) on the
  encoded columns, its leaves sized to the data; below 500 labeled rows standardised
  logistic (ridge) regression competes with it on val;
- images: logistic regression on the pixels (scaled to [0, 1]; block-averaged down
  to at most 32 pixels a side).

scikit-learn, not a Keras model: these are the baselines as practitioners run them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pretrainer import files
from pretrainer.data import modalities
from pretrainer.data.modalities.image import MAX_SIDE
from pretrainer.data.records import StoreManifest

C_GRID = (0.1, 1.0, 10.0)  # logistic regression's inverse regularisation, chosen on val
GRID_MAX_TRAIN = 20_000  # above this many labeled examples, C=1 only (three fits cost minutes)


def describe(modality: str, regression: bool) -> str:
    return modalities.get(modality).classical_describe(regression)


def _arrays(store: Path, split: str, modality: str):
    from pretrainer.data import pipeline

    if pipeline.split_info(store, split).count == 0:
        return None, None
    x, y = pipeline.to_numpy(pipeline.examples(store, split, batch_size=512, cache=False,
                                               standardize=False))
    x = modalities.get(modality).classical_features(x)
    return x, np.asarray(y).reshape(len(y), *np.shape(y)[1:])


def class_indices(y) -> np.ndarray:
    """Class indices [n] from sparse labels or one-hot rows."""
    y = np.asarray(y)
    return y.argmax(-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(-1).astype(np.int64)


def _score(est, x, y, regression: bool) -> float:
    """Higher is better: accuracy, or minus the mean squared error."""
    pred = est.predict(x)
    if regression:
        return -float(np.mean((pred - np.asarray(y, np.float64).reshape(-1)) ** 2))
    return float((pred == y).mean())


def fit_and_score(store: Path, manifest: StoreManifest) -> dict:
    """{"name", "y_true", "y_pred", "accuracy" or "mse", "chosen", "seconds"} on test."""
    t0 = time.perf_counter()
    modality = manifest.modality
    regression = manifest.regression
    x, y = _arrays(store, "train", modality)
    xv, yv = _arrays(store, "val", modality)
    xt, yt = _arrays(store, "test", modality)
    y = y.reshape(-1).astype(np.float64) if regression else class_indices(y)
    yt = yt.reshape(-1).astype(np.float64) if regression else class_indices(yt)
    if xv is not None:
        yv = yv.reshape(-1).astype(np.float64) if regression else class_indices(yv)
    models = manifest.kind.classical_candidates(regression, len(y), C_GRID)
    c_grid = [name for name, _ in models] == [f"C={c:g}" for c in C_GRID]  # images, text
    if c_grid and (xv is None or len(y) > GRID_MAX_TRAIN):
        models = [models[C_GRID.index(1.0)]]  # no val to choose on, or too big to fit 3
    if xv is None:
        models = models[:1]
    if len(np.unique(y)) < 2 and not regression:  # one class labeled: predict it
        pred = np.full(len(yt), y[0])
        return _result(modality, regression, yt, pred, "one class", t0)
    scores = []
    for _, m in models:
        m.fit(x, y)
        scores.append(_score(m, xv, yv, regression) if len(models) > 1 else 0.0)
    pick = int(np.argmax(scores))
    label, best = models[pick]
    chosen = label + (" on val" if len(models) > 1 else "")
    out = _result(modality, regression, yt, best.predict(xt), chosen, t0)
    if xv is not None:  # the validation score, the one arms are chosen on (MSE: as is)
        score = _score(best, xv, yv, regression)
        out["val_score"] = -score if regression else score
    out["estimator"] = best
    return out


def keras_model(result: dict, manifest: StoreManifest):
    """The classical baseline as a Keras model that takes what the deep models take (so
    deploy, predict and serve treat it like any finetune run). Images: block means
    (AveragePooling2D, as modalities.image.downsample) -> Flatten -> Dense softmax holding
    the logistic regression's coefficients. Text: raw strings -> the fitted TF-IDF
    vocabularies and idf in TensorFlow string ops -> the same coefficients
    (models.tfidf.TfidfLinear). None for tables (gradient boosting has no Keras twin)."""
    est = result.get("estimator")
    if not manifest.kind.classical_exact or "accuracy" not in result or est is None:
        return None
    import keras

    if manifest.kind.strings:
        return _text_model(est, manifest.num_classes)
    h, w, c = manifest.shape
    f = max(1, -(-max(h, w) // MAX_SIDE))
    k = manifest.num_classes

    inputs = keras.Input(shape=(h, w, c), name="image")
    x = keras.layers.AveragePooling2D(f, name="block_mean")(inputs) if f > 1 else inputs
    x = keras.layers.Flatten(name="pixels")(x)
    dense = keras.layers.Dense(k, activation="softmax", dtype="float32", name="probabilities")
    outputs = dense(x)
    dense.set_weights(dense_weights(est, k))
    return keras.Model(inputs, outputs, name="classical")


def _text_model(est, num_classes: int):
    """TF-IDF (a FeatureUnion of TfidfVectorizers) + LogisticRegression as Keras."""
    import keras

    from pretrainer.models.tfidf import TfidfLinear

    union, lr = est.steps[0][1], est.steps[-1][1]
    blocks = []
    for _, vec in union.transformer_list:
        vocab = [""] * len(vec.vocabulary_)
        for term, i in vec.vocabulary_.items():
            vocab[i] = term
        blocks.append({"analyzer": vec.analyzer, "ngram_range": list(vec.ngram_range),
                       "vocabulary": vocab, "idf": vec.idf_.astype(float).tolist()})
    inputs = keras.Input(shape=(), dtype="string", name="text")
    layer = TfidfLinear(blocks, num_classes, name="tfidf_logistic")
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(
        layer(inputs))
    layer.set_weights(dense_weights(lr, num_classes))
    return keras.Model(inputs, outputs, name="classical")


def dense_weights(est, num_classes: int) -> list[np.ndarray]:
    """[kernel [d, K], bias [K]] of a softmax Dense layer that gives a fitted scikit-learn
    LogisticRegression's predict_proba over all `num_classes` classes."""
    coef = np.zeros((num_classes, est.coef_.shape[1]), np.float32)
    bias = np.full(num_classes, -30.0, np.float32)  # a class the labels never showed: ~0
    classes = np.asarray(est.classes_, np.int64)
    if est.coef_.shape[0] == 1:  # two classes: scikit-learn keeps one row (class 1 vs 0)
        coef[classes[1]], bias[classes[1]] = est.coef_[0], est.intercept_[0]
        coef[classes[0]], bias[classes[0]] = 0.0, 0.0
    else:
        coef[classes], bias[classes] = est.coef_, est.intercept_
    return [coef.T, bias]


def _result(modality: str, regression: bool, yt, pred, chosen: str, t0: float) -> dict:
    out = {"name": describe(modality, regression), "y_true": yt, "y_pred": pred,
           "chosen": chosen, "seconds": round(time.perf_counter() - t0, 2),
           "samples": int(len(yt))}
    if regression:
        out["mse"] = float(np.mean((np.asarray(pred, np.float64) - yt) ** 2))
    else:
        out["accuracy"] = float((np.asarray(pred) == yt).mean())
    return out


def save(result: dict, out_dir: Path) -> Path:
    """predictions.npz (scoring.write_predictions) and metrics.json."""
    from pretrainer import scoring

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scoring.write_predictions(out_dir, result["y_true"], result["y_pred"], "mse" in result)
    files.atomic_write_json(out_dir / "metrics.json",
                           {k: v for k, v in result.items()
                            if k not in ("y_true", "y_pred", "estimator")})
    return out_dir
