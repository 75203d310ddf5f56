"""finetune: backbone (pretrained run or scratch) + classification head on the labeled split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pretrainer import runs
from pretrainer.config import Config, to_yaml
from pretrainer.console import esc, info
from pretrainer.data import pipeline
from pretrainer.data.records import StoreManifest
from pretrainer.data.store import MANIFEST, join, read_manifest
from pretrainer.errors import ConfigError, DataError
from pretrainer.models import build_backbone, freeze
from pretrainer.models.heads import classifier, normalizer, regressor, text_classifier
from pretrainer.stages import load_keras_artifact, save_artifact, training_run
from pretrainer.stages.collect import ensure_store
from pretrainer.strategy import is_multi_worker
from pretrainer.train import (
    GradualUnfreeze,
    KeepBest,
    ScaledUpdates,
    TrainingPlan,
    backbone_blocks,
    compile_kwargs,
    epoch_steps,
    fit,
    optimizer_step,
    setup,
)
from pretrainer.train.cached import FeatureRows, probe_parts


def run(cfg: Config, run: Optional[str | Path] = None) -> Path:
    import keras

    ft = cfg.finetune
    # the pretrain run first: without one, say so before collecting anything
    # (a prior from pretrained features needs the pretrain run whatever the init)
    prior_features = ft.prior != "none" and ft.semi_supervised != "none" and ft.init != "public"
    parent = (runs.resolve(cfg.paths.runs, cfg.experiment, "pretrain", run)
              if ft.init == "pretrained" or prior_features else None)
    store = ensure_store(cfg)
    manifest = read_manifest(store)
    _check(cfg, store, manifest)
    strategy, why = setup(cfg.trainer, cfg.seed, {"modality": manifest.modality,
                                                  "backbone": cfg.backbone.name},
                          data_service=cfg.data.service)
    if ft.semi_supervised != "none" and is_multi_worker(strategy):
        raise ConfigError("finetune.semi_supervised=fixmatch runs on one machine (cpu, gpu, "
                          "mirrored or tpu), not multi_worker")
    with training_run(cfg.paths.runs, cfg.experiment, "finetune", strategy, to_yaml(cfg),
                      parent=parent, dataset_manifest=join(store, MANIFEST),
                      extra={"init": ft.init, "mode": ft.mode, "labels": manifest.count("train"),
                             "strategy": why, "seed": cfg.seed,
                             "semi_supervised": ft.semi_supervised}) as tr:
        source = (f"backbone from {parent}" if ft.init == "pretrained" else "ImageNet backbone"
                  if ft.init == "public" else "backbone from scratch"
                  + (f", prior from {parent}" if parent else ""))
        info(f"[bold]finetune[/bold] ({ft.init}, {ft.mode}): {esc(source)} -> {esc(tr.path)} "
             f"[dim]({why}{', resuming' if tr.resumed else ''})[/dim]")
        plan = _plan(cfg, store, manifest)
        with strategy.scope():
            built = _build(cfg, parent, store, manifest, tr.path, plan)
        callbacks = list(built.callbacks)
        monitor, mode = plan.training.monitor, plan.training.mode
        # the best validation epoch, not the last (finetunes on few labels overfit); EMA
        # runs end on the average of the weights, which is what they are for: keep the last
        keep_best = (KeepBest(tr.path, monitor, mode)
                     if ft.keep == "best" and plan.val_ds is not None
                     and ft.ema_momentum is None else None)
        if keep_best is not None:
            callbacks.append(keep_best)
        def inputs(ds):  # a probe's texts -> their cached features
            return ds.map(built.rows) if built.rows is not None and ds is not None else ds

        history = fit(built.trained, lambda start: inputs(_train_data(cfg, store, plan, start)),
                      plan.training, run_dir=tr.path, trainer=cfg.trainer,
                      title=f"finetune[{ft.init}]", val_ds=inputs(plan.val_ds),
                      restore_from=tr.restore_from, class_weight=built.class_weight,
                      callbacks=tuple(callbacks))
        if tr.chief:  # a worker's scratch dir is not a run: the chief writes it
            _finish(cfg, tr.path, built, history, keep_best, monitor, manifest)
    keras.backend.clear_session()
    return tr.path


def _check(cfg: Config, store, manifest: StoreManifest) -> None:
    """Settings that cannot train on this store: one line each, before any run exists."""
    ft = cfg.finetune
    if manifest.count("train") == 0:
        raise DataError(f"{store} holds no labeled examples (an unlabeled-only source): use it "
                        f"to pretrain, then finetune with a labeled data config and --run")
    if not manifest.regression:
        _warn_few_labels(manifest, cfg)
    # what the options need from the data's kind is checked when the config is composed
    if ft.semi_supervised != "none" and manifest.count("unlabeled") == 0:
        raise ConfigError("finetune.semi_supervised=fixmatch needs an unlabeled split; this "
                          "store has none. Set finetune.semi_supervised=none")


@dataclass(frozen=True)
class _Plan:
    """What the finetune's loop is sized by, derived once from the config and the store."""

    read: dict  # pipeline.examples options shared by the train and val streams
    scaled: bool  # per-variable learning rates (gradual, or a backbone multiplier)
    training: TrainingPlan  # what fit is sized by
    val_ds: object = None


def _plan(cfg: Config, store, manifest: StoreManifest) -> _Plan:
    ft = cfg.finetune
    bs = ft.batch_size or cfg.trainer.batch_size
    scaled = ft.mode == "gradual" or (ft.mode == "full" and ft.backbone_lr_multiplier != 1)
    per_execution = 1 if scaled else cfg.trainer.steps_per_execution
    steps_per_epoch = ft.steps_per_epoch
    if not steps_per_epoch:  # one pass, or a little more when that runs whole executions
        steps_per_epoch, note = epoch_steps(pipeline.steps(store, "train", bs), per_execution)
        if note:
            info(f"  finetune: {note}")
    one_hot = ((ft.loss == "categorical_crossentropy" or ft.label_smoothing > 0)
               and not manifest.regression)
    read = dict(one_hot=one_hot, cache=cfg.data.cache, standardize=False,
                shuffle_buffer=cfg.data.shuffle_buffer)
    epochs = ft.epochs or cfg.trainer.epochs
    monitor, mode = ("val_loss", "min") if manifest.regression else ("val_accuracy", "max")
    if manifest.count("val") == 0:
        return _Plan(read, scaled, TrainingPlan(
            steps_per_epoch, epochs, batch_size=bs, val_batch_size=bs, monitor=monitor,
            mode=mode))
    # (the validation steps a multiple of steps/execution)
    vbs = pipeline.validation_batch(store, "val", bs, steps_per_epoch, per_execution)
    return _Plan(read, scaled, TrainingPlan(
        steps_per_epoch, epochs, batch_size=bs, validation_steps=pipeline.steps(store, "val", vbs),
        val_batch_size=vbs, monitor=monitor, mode=mode),
        val_ds=pipeline.examples(store, "val", batch_size=vbs, repeat=True, **read))


def _train_data(cfg: Config, store, plan: _Plan, start_batch: int):
    """The training stream from batch `start_batch` on (exact resume)."""
    ft = cfg.finetune
    ds = pipeline.examples(store, "train", batch_size=plan.training.batch_size, shuffle=True,
                           repeat=True, seed=cfg.seed, augment=ft.augment,
                           start_batch=start_batch, **plan.read)
    if ft.semi_supervised == "none":
        return ds
    from pretrainer.semi import unlabeled_views, zip_views

    return zip_views(ds, unlabeled_views(
        store, batch_size=plan.training.batch_size * ft.unlabeled_ratio, weak=ft.augment,
        seed=cfg.seed, cache=cfg.data.cache, start_batch=start_batch,
        shuffle_buffer=cfg.data.shuffle_buffer))


@dataclass(frozen=True)
class _Built:
    model: object  # the classifier (what is saved)
    trained: object  # what fit trains: the model, or FixMatch's wrapper around it
    class_weight: Optional[dict]
    callbacks: tuple = ()
    rows: Optional[object] = None  # a frozen text trunk's features, computed once (a map)


def _build(cfg: Config, parent: Optional[Path], store, manifest: StoreManifest,
           run_dir: Path, plan: _Plan) -> _Built:
    """Backbone (pretrained, public or new) + head, compiled (inside the strategy's scope)."""
    import keras

    ft = cfg.finetune
    text, regression = manifest.kind.strings, manifest.regression
    pretrained = None
    if text:
        backbone, tok = _text_backbone(cfg, parent, store, run_dir)
    elif ft.init == "public":
        backbone = _public_backbone(cfg, manifest.shape)
    else:
        pretrained = (load_keras_artifact(parent, "backbone.keras", manifest.shape,
                                          "pretrain on this dataset, or use "
                                          "finetune.init=scratch") if parent else None)
        backbone = (pretrained if ft.init == "pretrained"
                    else build_backbone(manifest.shape, cfg.backbone))
    if ft.mode == "linear_probe":
        freeze(backbone)
    norm = normalizer(manifest.feature_stats) if manifest.kind.standardized else None
    if text:
        wide = (_wide_ngrams(store, backbone, tok, ft.wide_max_tokens)
                if ft.wide == "ngrams" else None)
        model = text_classifier(backbone, tok, manifest.num_classes, dropout=ft.dropout,
                                wide=wide, l2=ft.head_l2)
        loss, metrics = ft.loss, ["accuracy"]
    elif regression:
        model = regressor(backbone, hidden=ft.head_units, dropout=ft.dropout, normalizer=norm)
        loss, metrics = "mse", ["mae"]
    else:
        model = classifier(backbone, manifest.num_classes, hidden=ft.head_units,
                           dropout=ft.dropout, normalizer=norm, feature_norm=ft.feature_norm)
        loss, metrics = ft.loss, ["accuracy"]
    if ft.label_smoothing > 0 and not regression:  # needs one-hot targets
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=ft.label_smoothing)
    class_weight = _class_weight(ft, manifest) if not regression else None
    trained, rows = model, None
    parts = probe_parts(model) if text and ft.mode == "linear_probe" else None
    if parts:  # the head trains on the frozen trunk's features, computed once per text
        trunk, trained = parts
        rows = FeatureRows(trunk, np.concatenate([_split_texts(store, s)
                                                  for s in ("train", "val")]))
    if ft.semi_supervised != "none":
        trained = _consistency(cfg, model, pretrained, parent, store, manifest, run_dir,
                               plan, class_weight)
        class_weight = None  # applied inside Consistency's train_step
    lr = _learning_rate(ft, plan.training.steps_per_epoch, cfg)
    ema = ({"use_ema": True, "ema_momentum": ft.ema_momentum}
           if ft.ema_momentum is not None else {})
    optimizer = (keras.optimizers.SGD(lr, **ema) if ft.optimizer == "sgd"
                 else keras.optimizers.Adam(lr, **ema))
    trained.compile(optimizer=optimizer, loss=loss, metrics=metrics,
                    **compile_kwargs(cfg.trainer))
    callbacks = []
    if ft.mode == "full" and ft.backbone_lr_multiplier != 1.0:
        callbacks.append(ScaledUpdates(backbone.trainable_variables, ft.backbone_lr_multiplier))
    if ft.mode == "gradual":
        callbacks.append(GradualUnfreeze(backbone_blocks(backbone), ft.unfreeze_every))
    return _Built(model, trained, class_weight, tuple(callbacks), rows)


def _consistency(cfg: Config, model, pretrained, parent, store, manifest: StoreManifest,
                 run_dir: Path, plan: _Plan, class_weight):
    """FixMatch around `model`, with the label-propagation prior when asked for."""
    from pretrainer.semi import Consistency, propagation_prior

    ft = cfg.finetune
    prior = None
    if ft.prior == "propagation" and parent is None:
        info("  finetune: finetune.prior=propagation needs pretrained features; this "
             f"{ft.init} run trains without the prior")
    elif ft.prior == "propagation":
        prior, facts = propagation_prior(pretrained, store, manifest.num_classes,
                                         layer=ft.prior_layer)
        shown = (f", val accuracy {facts['val_accuracy']:.2%}"
                 if facts["val_accuracy"] is not None else "")
        whitened = " (whitened components)" if facts["graph"] == "whitened" else ""
        info(f"  prior pseudo-labels: labels spread over a {facts['graph_k']}-NN graph "
             f"of {facts['pool']:,} pool {ft.prior_layer or 'embedding'} features{whitened}, "
             f"C={facts['C']:g}{shown} "
             f"({facts['seconds']:.0f} s)")
        runs.update_manifest(run_dir, prior=facts)
    return Consistency(model, threshold=ft.confidence, weight=ft.unlabeled_weight,
                       class_weight=class_weight, align=ft.distribution_alignment,
                       prior=prior, prior_weight=ft.prior_weight,
                       self_supervised_weight=ft.self_supervised_weight,
                       prior_steps=int(ft.prior_decay * plan.training.steps_per_epoch
                                       * (ft.epochs or cfg.trainer.epochs)))


def _finish(cfg: Config, run_dir: Path, built: _Built, history: dict, keep_best,
            monitor: str, manifest: StoreManifest) -> None:
    """Keep the chosen epoch's weights, save the model and its final metrics."""
    kept = keep_best.restore(built.trained) if keep_best is not None else None
    epochs_run = len(history["loss"])
    kept_epoch = kept["epoch"] if kept else epochs_run
    save_artifact(run_dir, "model.keras", built.model)
    final = {k: float(v[kept_epoch - 1]) for k, v in history.items()}
    runs.update_manifest(run_dir, final_metrics=final, epochs=epochs_run,
                         steps=optimizer_step(built.trained),
                         kept={"epoch": kept_epoch, "rule": (f"best {monitor}" if kept
                                                             else "last epoch")})
    if kept and kept_epoch != epochs_run:
        info(f"  kept the weights of epoch {kept_epoch}/{epochs_run} (best {monitor} "
             f"{kept['value']:.4f}; finetune.keep=last keeps the last)")
    shown = f"val_accuracy {final['val_accuracy']:.4f}" if "val_accuracy" in final else ""
    info(f"[green]finetune done[/green]: {esc(run_dir / 'model.keras')}  {shown}")
    if manifest.regression and cfg.backbone.name == "mlp" and not cfg.backbone.filters \
            and cfg.backbone.latent_dim == 0:
        _print_linear(built.model, manifest, run_dir)


FEW_LABELS = 5  # per class: below this a labeled split is more a draw than a budget
_WARNED: set = set()  # stores already warned about in this process (pipeline: 3 finetunes)


def _warn_few_labels(manifest: StoreManifest, cfg: Config) -> None:
    """Say so when the labeled split has fewer than FEW_LABELS examples of some class:
    a data group swapped on the command line (data=text_files) brings its own
    labeled_fraction, which can shrink the experiment's label budget unnoticed."""
    from pretrainer.console import warn

    counts = manifest.per_class("train")
    few = {name: n for name, n in counts.items() if n < FEW_LABELS}
    if not counts or not few or cfg.data.name in _WARNED:
        return
    _WARNED.add(cfg.data.name)
    shown = ", ".join(f"{name} {n}" for name, n in sorted(few.items(), key=lambda t: t[1])[:5])
    more = f" and {len(few) - 5} more" if len(few) > 5 else ""
    budget = (f"data.labels_per_class={cfg.data.labels_per_class}"
              if cfg.data.labels_per_class is not None
              else f"data.labeled_fraction={cfg.data.labeled_fraction:g}")
    warn(f"the labeled split has fewer than {FEW_LABELS} examples of {len(few)} of "
         f"{len(counts)} classes ({shown}{more}), from {budget} of the data group "
         f"'{cfg.data.name}'; set data.labeled_fraction or data.labels_per_class to the "
         f"budget you mean")


def _print_linear(model, manifest: StoreManifest, run_dir: Path) -> None:
    """A linear model on standardised features, stated in the data's own units."""
    w, b = (np.asarray(v, np.float64) for v in model.get_layer("prediction").get_weights())
    mean = np.asarray(manifest.feature_stats.mean)
    std = np.asarray(manifest.feature_stats.std)
    coef = w[:, 0] / std
    intercept = float(b[0] - (coef * mean).sum())
    target = manifest.source.get("target") or "target"
    terms = " + ".join(f"{c:.4f} × {n}" for c, n in zip(coef, manifest.feature_names,
                                                       strict=True))
    info(f"learned: {target} ≈ {terms} + {intercept:.4f}")
    runs.update_manifest(run_dir, linear={"coefficients": dict(zip(
        manifest.feature_names, coef.tolist(), strict=True)), "intercept": intercept})


def _text_backbone(cfg: Config, parent: Optional[Path], store, run_dir: Path):
    """(transformer backbone, tokenizer): the pretrain run's, or new ones for scratch
    (the same vocabulary recipe on the same unlabeled split, so the two are comparable)."""
    import dataclasses

    from pretrainer.data.modalities.text import (
        VOCAB_FILE,
        fitted_length,
        load_vocabulary,
        run_vocabulary,
        save_vocabulary,
        tokenizer,
    )

    def pool():
        return pipeline.texts(store, "unlabeled", batch_size=512, labels=False, cache=False)

    if parent is not None:
        if not (Path(parent) / VOCAB_FILE).is_file():
            raise DataError(f"{parent} has no {VOCAB_FILE}: it was not pretrained on text")
        vocab = load_vocabulary(Path(parent) / VOCAB_FILE)
        save_vocabulary(vocab, Path(run_dir) / VOCAB_FILE)
        backbone = load_keras_artifact(parent, "backbone.keras", None)
        if backbone.input.dtype not in ("int32", "int64"):
            raise DataError(f"{parent}'s backbone takes {backbone.input_shape} images, not "
                            f"token ids: pretrain on text first")
        length = backbone.input_shape[1]
    else:
        # the same recipe as pretrain's; a resumed run keeps the vocab.txt it saved
        vocab = run_vocabulary(run_dir, pool, cfg.backbone.vocabulary_size)
        length = cfg.backbone.sequence_length
        if cfg.backbone.fit_length:  # as pretrain sizes it, so scratch and pretrained match
            length = fitted_length(vocab, pool(), length)
        backbone = build_backbone((length,), dataclasses.replace(
            cfg.backbone, vocabulary_size=len(vocab), sequence_length=length))
    return backbone, tokenizer(vocab, length)


def _wide_ngrams(store, backbone, tok, max_tokens: int) -> dict:
    """The Wide & Deep n-gram part, fitted on the labeled split's texts."""
    import tensorflow as tf

    from pretrainer.models.heads import ngram_features, text_embedding

    texts = _split_texts(store, "train")
    pooled = text_embedding(backbone, tok)
    return ngram_features(texts, lambda t: pooled.predict(tf.constant(t), batch_size=256,
                                                          verbose=0), max_tokens)


def _split_texts(store, split: str):
    batches = pipeline.texts(store, split, batch_size=512, labels=False, cache=False)
    return np.concatenate(list(batches.as_numpy_iterator()) or [np.array([], object)])


def _public_backbone(cfg: Config, shape: tuple):
    """finetune.init=public: keras.applications' ImageNet weights (downloaded once)."""
    import dataclasses

    # keras.applications downloads the weights once into ~/.keras/models; offline and not
    # cached, the builder's error is one line that names init=pretrained/scratch
    return build_backbone(shape, dataclasses.replace(cfg.backbone, weights="imagenet"))


PUBLIC_WEIGHTS = {"resnet": "ResNet50V2", "mobilenet": "MobileNetV2"}


def _learning_rate(ft, per_epoch: int, cfg: Config):
    """A float, or warm-up + cosine decay over the run's optimizer steps."""
    if ft.schedule == "constant" and ft.warmup_epochs == 0:
        return ft.learning_rate
    import keras

    total = per_epoch * (ft.epochs or cfg.trainer.epochs)
    warmup = min(per_epoch * ft.warmup_epochs, total - 1)
    if ft.schedule == "constant":  # warm-up, then flat
        return keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=1, alpha=1.0, warmup_target=ft.learning_rate, warmup_steps=warmup)
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else ft.learning_rate, decay_steps=max(1, total - warmup),
        warmup_target=ft.learning_rate if warmup else None, warmup_steps=warmup)


def _class_weight(ft, manifest: StoreManifest) -> Optional[dict]:
    """Inverse-frequency weights of the labeled split (finetune.class_weight=balanced)."""
    if ft.class_weight == "none":
        return None
    counts = manifest.per_class("train")
    total, n = sum(counts.values()), len(counts)
    index = {name: i for i, name in enumerate(manifest.class_names)}
    return {index[name]: total / (n * c) for name, c in counts.items() if c}
