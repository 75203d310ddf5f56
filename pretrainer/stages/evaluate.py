"""evaluate: a finetuned model on the test split: scikit-learn metrics, confusion matrix, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from pretrainer import files, runs, scoring
from pretrainer.config import Config, to_yaml
from pretrainer.console import console, esc, info, table
from pretrainer.data import pipeline
from pretrainer.data.records import StoreManifest
from pretrainer.data.store import MANIFEST, join, read_manifest, store_path
from pretrainer.errors import RunError
from pretrainer.stages import load_keras_artifact, trained_store


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, macro/weighted precision-recall-F1 and per-class figures (scikit-learn)."""
    from sklearn import metrics as skm

    y_pred = probs.argmax(axis=1)
    labels = list(range(len(class_names)))
    out = {"samples": int(len(y_true)), "accuracy": float(skm.accuracy_score(y_true, y_pred))}
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                         average=avg, zero_division=0)
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = float(p), float(r), float(f)
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                     average=None, zero_division=0)
    out["per_class"] = {name: {"precision": float(p[i]), "recall": float(r[i]),
                               "f1": float(f[i]), "support": int(s[i])}
                        for i, name in enumerate(class_names)}
    out["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    k = min(5, len(class_names) - 1)
    if k >= 2:
        out[f"top{k}_accuracy"] = float(skm.top_k_accuracy_score(y_true, probs, k=k,
                                                                  labels=labels))
    present = np.unique(y_true)
    if len(present) == len(class_names) and len(present) > 1:  # AUC needs every class present
        p = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)
        out["roc_auc_ovr"] = float(skm.roc_auc_score(
            y_true, p if len(labels) > 2 else p[:, 1], multi_class="ovr", labels=labels))
    return out


def majority_rate(y_true: np.ndarray, manifest: StoreManifest) -> float:
    """The accuracy of always predicting the labeled split's most frequent class (the
    floor any classifier must clear), on these examples."""
    counts = manifest.per_class("train")
    names = manifest.class_names
    if counts:
        top = names.index(max(counts, key=counts.get))
    else:  # no per-class counts recorded: the most frequent class here
        top = int(np.bincount(np.asarray(y_true, np.int64)).argmax())
    return float((np.asarray(y_true) == top).mean())


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """MSE, MAE and R² (scikit-learn); R² is undefined for fewer than two examples."""
    from sklearn import metrics as skm

    out = {"samples": int(len(y_true)),
           "mse": float(skm.mean_squared_error(y_true, y_pred)),
           "mae": float(skm.mean_absolute_error(y_true, y_pred))}
    out["r2"] = float(skm.r2_score(y_true, y_pred)) if len(y_true) > 1 else float("nan")
    return out


def _regression_report(result: dict) -> str:
    return "\n".join([
        f"# Evaluation on the {result['split']} split", "",
        f"Model: `{result['finetune_run']}` (init {result['init']}, {result['labels']} labels)",
        "", "| metric | value |", "|---|---|",
        *(f"| {k} | {result[k]:.6g} |" for k in ("mse", "mae", "r2")), ""])


def load_finetuned(cfg: Config, run: Optional[str | Path]):
    """(finetune run, its model.keras, the store it was trained on, that store's manifest)
    for `--run DIR` or the latest finished finetune run."""
    ft_run = runs.resolve(cfg.paths.runs, cfg.experiment, "finetune", run)
    store = trained_store(ft_run, store_path(cfg))
    manifest = read_manifest(store)
    return ft_run, load_keras_artifact(ft_run, "model.keras", tuple(manifest.shape)), \
        store, manifest


def save_predictions(out: Path, y: np.ndarray, probs: np.ndarray, regression: bool) -> None:
    """predictions.npz (scoring.write_predictions) from the model's outputs."""
    scoring.write_predictions(out, y, probs[:, 0] if regression else probs.argmax(1), regression)


def predict_split(model, store: Path, split: str, batch_size: int = 256,
                  limit: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, labels, probabilities) for up to `limit` examples of a labeled split."""
    x, y = pipeline.to_numpy(pipeline.examples(store, split, batch_size=batch_size, cache=False,
                                               standardize=False))
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if x.dtype == object:  # text: Keras takes string tensors, not object arrays
        import tensorflow as tf

        feed = tf.data.Dataset.from_tensor_slices(tf.constant(list(x))).batch(batch_size)
        probs = np.asarray(model.predict(feed, verbose=0), dtype=np.float32)
    else:
        probs = np.asarray(model.predict(x, batch_size=batch_size, verbose=0),
                           dtype=np.float32)
    return x, y, probs


def run(cfg: Config, run: Optional[str | Path] = None) -> Path:
    import keras

    if run is not None and runs.read_manifest(runs.require_done(run)).stage == "pretrain":
        store = store_path(cfg)
        return embedding_quality(cfg, runs.require_done(run, "pretrain"), store,
                                 read_manifest(store))
    ft_run, model, store, manifest = load_finetuned(cfg, run)
    split = cfg.evaluate.split
    x, y, probs = predict_split(model, store, split)
    names = manifest.class_names
    regression = manifest.regression
    if regression:
        result = regression_metrics(y, probs[:, 0])
    else:
        if probs.shape[1] != len(names):
            raise RunError(f"The model predicts {probs.shape[1]} classes; the dataset has "
                           f"{len(names)}")
        result = classification_metrics(y, probs, names)
        result["majority_rate"] = majority_rate(y, manifest)
    ft_manifest = runs.read_manifest(ft_run)
    result.update(split=split, finetune_run=str(ft_run), init=ft_manifest.init,
                  mode=ft_manifest.mode, labels=ft_manifest.labels)
    with runs.opened(cfg.paths.runs, cfg.experiment, "evaluate", to_yaml(cfg), parent=ft_run,
                     dataset_manifest=join(store, MANIFEST), extra={"split": split}) as opened:
        out = opened.path
        files.atomic_write_json(out / "metrics.json", result)
        save_predictions(out, y, probs, regression)
        if regression:
            shown = ("mse", "mae", "r2")
            files.atomic_write_text(out / "report.md", _regression_report(result))
        else:
            shown = ("accuracy", "majority_rate", "precision_macro", "recall_macro",
                     "f1_macro", "f1_weighted")
            _confusion_png(np.array(result["confusion_matrix"]), names,
                           out / "plots" / "confusion_matrix.png")
            explained = _explain(cfg, model, x, y, probs, names, out, manifest.kind)
            files.atomic_write_text(out / "report.md", _report(result, names, explained))
    rows = [[k, f"{result[k]:.4f}"] for k in shown]
    classical = _classical_beside(out, result)
    if classical:
        rows.append([f"classical baseline ({classical['mode']})", f"{classical['score']:.4f}"])
    console.print(table(
        f"evaluate ({result['init']}, {result['labels']} labels) on {split}: {len(y)} examples",
        ["metric", "value"], rows))
    info(f"[green]evaluate done[/green]: {esc(out / 'metrics.json')}")
    keras.backend.clear_session()
    return out


def _classical_beside(out: Path, result: dict) -> Optional[dict]:
    """The experiment's classical model (pipeline's logistic regression on pixels), scored
    on the same split of the same store, when one has been evaluated: the number a
    pretrained model has to beat. None otherwise (or for the classical model itself)."""
    if result.get("init") == "classical":
        return None
    key = "mse" if "mse" in result else "accuracy"
    for ev, _, model in scoring.evaluations_beside(out, "classical"):
        if not (ev / "metrics.json").is_file():
            continue
        metrics = json.loads((ev / "metrics.json").read_text())
        if metrics.get("split") == result.get("split") and key in metrics:
            return {"mode": model.mode, "score": metrics[key]}
    return None



def _confusion_png(cm: np.ndarray, names: list[str], path: Path) -> None:

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.5 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(norm, display_labels=names).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format=".2f", xticks_rotation=45)
    ax.set_title("confusion matrix (rows normalised)")
    fig.tight_layout()
    files.atomic_write_with(path, lambda p: fig.savefig(p, format="png", dpi=100), suffix=".png")
    plt.close(fig)


def _explain(cfg: Config, model, x, y, probs, names: list[str], out: Path,
             kind) -> Optional[str]:
    """evaluate.explain=N: attribution maps of N examples (half right, half wrong) as a PNG."""
    n, method = cfg.evaluate.explain, cfg.evaluate.explain_method
    if n == 0:
        return None
    if not kind.pixels:
        info(f"[yellow]evaluate.explain draws image maps; skipped for {kind.name} "
             f"data[/yellow]")
        return None
    from pretrainer.explain import attributions, grid_png, pick

    pred = probs.argmax(axis=1)
    idx = pick(y, pred, n)
    maps = attributions(model, x[idx], pred[idx], method)
    titles = [f"{names[y[i]]} → {names[pred[i]]} ({probs[i, pred[i]]:.2f})" for i in idx]
    rel = f"plots/{method}.png"
    grid_png(x[idx], maps, titles, out / rel, method)
    files.atomic_write_json(out / "explain.json", {
        "method": method, "target": "predicted class",
        "examples": [{"index": int(i), "true": names[y[i]], "predicted": names[pred[i]],
                      "probability": float(probs[i, pred[i]])} for i in idx]})
    info(f"  {method.replace('_', ' ')} maps for {len(idx)} examples: {esc(out / rel)}")
    return rel


def _report(result: dict, names: list[str], explained: Optional[str] = None) -> str:
    lines = [f"# Evaluation on the {result['split']} split", "",
             f"Model: `{result['finetune_run']}` (init {result['init']}, mode {result['mode']}, "
             f"{result['labels']} labels)", "", "| metric | value |", "|---|---|"]
    for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_weighted",
              "recall_weighted", "f1_weighted"):
        lines.append(f"| {k} | {result[k]:.4f} |")
    lines += ["", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    for name in names:
        c = result["per_class"][name]
        lines.append(f"| {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | "
                     f"{c['support']} |")
    lines += ["", "![confusion matrix](plots/confusion_matrix.png)", ""]
    if explained:
        lines += ["Attribution maps for the predicted class (half correct, half misclassified "
                  "examples; see explain.json):", "", f"![attributions]({explained})", ""]
    return "\n".join(lines)


def embed(backbone, store, split: str, manifest: StoreManifest, vocab_file: Path) -> tuple:
    """(features, labels) of a labeled split through a frozen backbone (mean-pooled for text)."""
    x, y = pipeline.to_numpy(pipeline.examples(store, split, batch_size=256, cache=False,
                                               standardize=True))
    if manifest.kind.strings:
        import tensorflow as tf

        from pretrainer.data.modalities.text import PAD, load_vocabulary, tokenizer

        tok = tokenizer(load_vocabulary(vocab_file), backbone.input_shape[1])
        ids = np.asarray(tok(tf.constant(list(x))))
        h = np.asarray(backbone.predict(ids, batch_size=256, verbose=0), np.float32)
        mask = (ids != PAD)[..., None]
        feats = (h * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1)
    else:
        feats = np.asarray(backbone.predict(x, batch_size=256, verbose=0), np.float32)
        feats = feats.reshape(len(feats), -1)
    return feats, y


def embedding_quality(cfg: Config, pretrain_run: Path, store, manifest: StoreManifest) -> Path:
    """Label-efficiency of frozen features without training a head: kNN accuracy and a
    logistic-regression probe (scikit-learn), fitted on the labeled train split."""
    import keras
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    if manifest.regression or manifest.num_classes < 2:
        raise RunError("embedding quality needs a labeled classification dataset")
    shape = manifest.example_shape
    backbone = load_keras_artifact(pretrain_run, "backbone.keras", shape,
                                   "pass a pretrain run of this dataset, or the data config "
                                   "it was pretrained on")
    vocab = pretrain_run / "vocab.txt"
    x_tr, y_tr = embed(backbone, store, "train", manifest, vocab)
    x_te, y_te = embed(backbone, store, cfg.evaluate.split, manifest, vocab)
    scaler = StandardScaler().fit(x_tr)
    x_tr, x_te = scaler.transform(x_tr), scaler.transform(x_te)
    k = max(1, min(5, len(y_tr) // max(manifest.num_classes, 1)))
    knn = KNeighborsClassifier(n_neighbors=k).fit(x_tr, y_tr)
    probe = LogisticRegression(max_iter=2000, C=0.1).fit(x_tr, y_tr)
    result = {"split": cfg.evaluate.split, "pretrain_run": str(pretrain_run),
              "labels": int(len(y_tr)), "samples": int(len(y_te)), "knn_k": k,
              "knn_accuracy": float((knn.predict(x_te) == y_te).mean()),
              "linear_probe_accuracy": float((probe.predict(x_te) == y_te).mean()),
              "feature_dim": int(x_tr.shape[1])}
    with runs.opened(cfg.paths.runs, cfg.experiment, "evaluate", to_yaml(cfg),
                     parent=pretrain_run, dataset_manifest=join(store, MANIFEST),
                     extra={"kind": "embedding"}) as opened:
        out = opened.path
        files.atomic_write_json(out / "metrics.json", result)

    console.print(table(f"embedding quality of {pretrain_run.name} ({result['labels']} labels, "
                        f"{result['samples']} {cfg.evaluate.split} examples)", ["metric", "value"],
                        [[f"kNN accuracy (k={k})", f"{result['knn_accuracy']:.4f}"],
                         ["logistic probe accuracy", f"{result['linear_probe_accuracy']:.4f}"]]))
    info(f"[green]evaluate done[/green]: {esc(out / 'metrics.json')}")
    keras.backend.clear_session()
    return out
