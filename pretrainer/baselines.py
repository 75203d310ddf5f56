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
from pretrainer.data.records import StoreManifest

C_GRID = (0.1, 1.0, 10.0)  # logistic regression's inverse regularisation, chosen on val
GRID_MAX_TRAIN = 20_000  # above this many labeled examples, C=1 only (three fits cost minutes)
MAX_SIDE = 32  # images are block-averaged down to at most this many pixels a side


def describe(modality: str, regression: bool) -> str:
    if modality == "text":
        return "TF-IDF (word 1-2 + char 2-5 grams) + logistic regression"
    if modality == "tabular":
        return (f"HistGradientBoosting{'Regressor' if regression else 'Classifier'} "
                f"(or {'ridge' if regression else 'logistic'} regression on small tables)")
    return "logistic regression on pixels"


def _arrays(store: Path, split: str, modality: str):
    from pretrainer.data import pipeline

    if pipeline.split_info(store, split).count == 0:
        return None, None
    x, y = pipeline.to_numpy(pipeline.examples(store, split, batch_size=512, cache=False,
                                               standardize=False))
    if modality == "text":
        x = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
             for t in x.reshape(-1)]
    else:
        x = np.asarray(x, np.float32)
        if modality == "image":
            x = _downsample(x / 255.0 if x.size and x.max() > 1.0 else x)
        x = x.reshape(len(x), -1)
    return x, np.asarray(y).reshape(len(y), *np.shape(y)[1:])


def _downsample(x: np.ndarray) -> np.ndarray:
    """Block means, so a 224x224x3 image is 28x28x3 features, not 150k."""
    f = max(1, -(-max(x.shape[1], x.shape[2]) // MAX_SIDE))
    if f == 1:
        return x
    h, w = x.shape[1] // f * f, x.shape[2] // f * f
    x = x[:, :h, :w]
    return x.reshape(len(x), h // f, f, w // f, f, x.shape[-1]).mean(axis=(2, 4))


def class_indices(y) -> np.ndarray:
    """Class indices [n] from sparse labels or one-hot rows."""
    y = np.asarray(y)
    return y.argmax(-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(-1).astype(np.int64)


SMALL_TABLE = 500  # below this many labeled rows, linear models join gradient boosting


def _candidates(modality: str, regression: bool, n: int) -> list[tuple[str, object]]:
    """(what it is, unfitted estimator), the default first: chosen on val when there is
    one. Tables: gradient boosting with leaves sized to the data (its default of 20 rows
    a leaf cannot split a table of 21 rows: 56.7 % on a separable one), and below
    SMALL_TABLE rows standardised logistic / ridge regression beside it."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.preprocessing import StandardScaler

    if modality == "tabular":
        leaf = min(20, max(1, n // 10))
        cls = HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
        out = [(f"{cls.__name__}(min_samples_leaf={leaf})",
                cls(random_state=0, min_samples_leaf=leaf))]
        if n < SMALL_TABLE:
            linear = ([(f"Ridge(alpha={1 / c:g})", Ridge(alpha=1 / c)) for c in C_GRID]
                      if regression else
                      [(f"LogisticRegression(C={c:g})", LogisticRegression(C=c, max_iter=2000))
                       for c in C_GRID])
            out = [(name, make_pipeline(StandardScaler(), est)) for name, est in linear] + out
        return out
    if modality == "text":
        def features():
            return make_union(
                TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True,
                                min_df=2))
        return [(f"C={c:g}", make_pipeline(features(), LogisticRegression(C=c, max_iter=2000)))
                for c in C_GRID]
    return [(f"C={c:g}", LogisticRegression(C=c, max_iter=500)) for c in C_GRID]


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
    models = _candidates(modality, regression, len(y))
    if modality != "tabular" and len(models) > 1 and (xv is None or len(y) > GRID_MAX_TRAIN):
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
    """The image baseline as a Keras model that takes the same [0, 1] images as the deep
    models (so deploy, predict and serve treat it like any finetune run): block means
    (AveragePooling2D, as _downsample) -> Flatten -> Dense softmax holding the logistic
    regression's coefficients. None for text and tables (TF-IDF and gradient boosting
    have no exact Keras twin here)."""
    est = result.get("estimator")
    if manifest.modality != "image" or "accuracy" not in result or est is None:
        return None
    import keras

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
