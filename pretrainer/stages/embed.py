"""embed: a backbone's embeddings, in the layout TensorBoard's embedding projector reads.

    pretrainer embed --run PRETRAIN_OR_FINETUNE_RUN [SPLIT | INPUT] [-o DIR]

SPLIT is a split of the run's own store (default: test); INPUT an image folder, a
text file or a CSV (read as `predict` reads them). DIR (default
<run>/embeddings/<split or input name>/) gets embeddings.npy, tensors.tsv,
metadata.tsv and projector_config.pbtxt: `tensorboard --logdir DIR` shows them
under Projector. A pretrain run gives its backbone's features (text: mean-pooled
over the tokens); a finetune run the features its head reads (the layer before
the output).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

from pretrainer import files, runs
from pretrainer.config import Config
from pretrainer.console import esc, info, warn
from pretrainer.data import inputs as user_inputs
from pretrainer.data.records import StoreManifest
from pretrainer.data.store import SPLITS, read_manifest
from pretrainer.errors import RunError


def frozen_layer(cfg: Config, manifest: StoreManifest) -> str:
    """The features `study` and `pipeline` score frozen: those the recipe's prior is
    built on (finetune.prior_layer) for images, so the frozen arms show what the prior
    will be worth; the backbone's output otherwise."""
    return "" if manifest.kind.strings else cfg.finetune.prior_layer


def featurizer(run_dir: Path, manifest: StoreManifest, layer: str = ""):
    """callable(batch of model inputs) -> float32 [batch, dim]. `layer`: for an image
    backbone, the features of that layer (finetune.prior_layer) instead of its output."""
    import keras
    import tensorflow as tf

    from pretrainer.stages import load_keras_artifact

    stage = runs.read_manifest(run_dir).stage
    text = manifest.kind.strings
    shape = None if text else tuple(manifest.shape)
    if stage == "finetune":
        model = load_keras_artifact(run_dir, "model.keras", shape)
        # a Wide & Deep text model (finetune.wide=ngrams): the pooled embedding, not the
        # tens of thousands of n-gram columns beside it
        names = {layer.name for layer in model.layers}
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs  # (a list
        # of one input warns "the structure of inputs doesn't match" on every call)
        features = keras.Model(inputs, model.get_layer("mean_pool").output
                               if "wide_and_deep" in names else model.layers[-1].input)

        def call(x):
            feed = tf.constant(list(x)) if text else x
            return np.asarray(features(feed, training=False), np.float32)

        return call
    backbone = load_keras_artifact(run_dir, "backbone.keras", None if text else shape)
    if not text:
        from pretrainer.semi import feature_layer

        backbone = feature_layer(backbone, layer)
        return lambda x: np.asarray(backbone(x, training=False), np.float32).reshape(len(x), -1)
    from pretrainer.data.modalities.text import load_vocabulary, tokenizer
    from pretrainer.models.heads import text_embedding

    pooled = text_embedding(backbone, tokenizer(load_vocabulary(run_dir / "vocab.txt"),
                                                backbone.input_shape[1]))
    return lambda x: np.asarray(pooled(tf.constant(list(x)), training=False), np.float32)


def _split_batches(store, split: str, manifest: StoreManifest, batch_size: int):
    from pretrainer.data import pipeline

    labeled = split != "unlabeled"
    ds = pipeline.examples(store, split, batch_size=batch_size, cache=False, labels=labeled,
                           standardize=False)
    names = list(manifest.class_names)
    i = 0
    for item in ds:
        x, y = (item if labeled else (item, None))
        x = x.numpy()
        meta = []
        for j in range(len(x)):
            label = int(y[j]) if y is not None and names else None
            meta.append([f"{split}/{i + j}", "" if label is None else str(label),
                         "" if label is None else names[label]])
        i += len(x)
        yield x, meta


def _tsv_cell(v: str) -> str:
    return re.sub(r"[\t\r\n]", " ", v)


def run(cfg: Config, source: Optional[str] = None, run: Optional[str] = None,
        output: Optional[str] = None, limit: int = 10000, batch_size: int = 256) -> Path:
    from pretrainer.data.store import store_path
    from pretrainer.stages import trained_store

    run_dir = runs.resolve(cfg.paths.runs, cfg.experiment, "pretrain", run,
                           accept=("pretrain", "finetune"))
    store = trained_store(run_dir, store_path(cfg))
    manifest = read_manifest(store)
    featurize = featurizer(run_dir, manifest)
    source = source or "test"
    if source in SPLITS and not Path(source).exists():
        if manifest.count(source) == 0:
            raise RunError(f"the store {store} has no {source} examples. Splits: "
                           + ", ".join(f"{s} ({v.count})" for s, v in
                                       manifest.splits.items() if v.count))

        stream, name = _split_batches(store, source, manifest, batch_size), source
        columns = ["example", "label", "class_name"]
    else:
        path = Path(source).expanduser()
        user_inputs.check_modality(path, manifest)
        stream = ((b.x, [[i] for i in b.ids]) for b in user_inputs.batches(path, manifest,
                                                                            batch_size))
        name, columns = path.stem or path.name, ["input"]
    out = Path(output).expanduser() if output else run_dir / "embeddings" / re.sub(
        r"[^A-Za-z0-9_.-]", "_", name)
    vectors, meta = [], []
    for x, m in stream:
        if len(m) == 0:
            continue
        take = min(len(m), limit - len(meta))
        vectors.append(featurize(x[:take]))
        meta += m[:take]
        if len(meta) >= limit:
            warn(f"embed: stopped at --limit {limit} examples")
            break
    if not meta:
        raise RunError(f"no readable examples in {source}")
    emb = np.concatenate(vectors)
    if out.exists() and not (out / "projector_config.pbtxt").is_file():
        raise RunError(f"{out} exists and is not an embed output; choose another -o")
    building = out.with_name(f".{out.name}.new")
    shutil.rmtree(building, ignore_errors=True)
    with files.atomic_dir(building) as tmp:
        tmp = Path(tmp)
        np.save(tmp / "embeddings.npy", emb)
        np.savetxt(tmp / "tensors.tsv", emb, delimiter="\t", fmt="%.6g")
        lines = ["\t".join(columns)] if len(columns) > 1 else []
        lines += ["\t".join(_tsv_cell(c) for c in row) for row in meta]
        (tmp / "metadata.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (tmp / "projector_config.pbtxt").write_text(
            "embeddings {\n"
            f"  tensor_name: \"{name} ({run_dir.name})\"\n"
            "  tensor_path: \"tensors.tsv\"\n"
            "  metadata_path: \"metadata.tsv\"\n"
            "}\n", encoding="utf-8")
    if out.exists():  # an earlier embed of the same source: replaced only once the new one is whole
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(building, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(building, out)
    info(f"[green]embed done[/green]: {len(meta)} x {emb.shape[1]} embeddings in {esc(out)} "
         f"(tensorboard --logdir {esc(out)}, Projector tab)")
    return out
