"""finetune: backbone (pretrained run or scratch) + classification head on the labeled split."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pretrainer import runs
from pretrainer.config import Config, to_yaml
from pretrainer.console import info
from pretrainer.data import pipeline
from pretrainer.data.store import MANIFEST, read_manifest
from pretrainer.errors import DataError
from pretrainer.models import build_backbone
from pretrainer.models.heads import classifier
from pretrainer.stages import load_keras_artifact, open_run
from pretrainer.stages.collect import store_path
from pretrainer.train import compile_kwargs, fit, optimizer_step, setup


def run(cfg: Config, run: Optional[str | Path] = None) -> Path:
    import keras

    store = store_path(cfg)
    manifest = read_manifest(store)
    if manifest["modality"] != "image":
        raise DataError(f"{store} holds {manifest['modality']} data; finetuning is implemented "
                        f"for images so far (text and tabular models are not yet)")
    if manifest["splits"]["train"]["count"] == 0:
        raise DataError(f"{store} holds no labeled examples (an unlabeled-only source): use it "
                        f"to pretrain, then finetune with a labeled data config and --run")
    shape = tuple(manifest["shape"])
    ft = cfg.finetune
    parent = (runs.resolve(cfg.paths.runs, cfg.experiment, "pretrain", run)
              if ft.init == "pretrained" else None)
    strategy, why = setup(cfg.trainer, cfg.seed)
    n_labels = manifest["splits"]["train"]["count"]
    run_dir, resumed, chief, restore_from = open_run(
        cfg.paths.runs, cfg.experiment, "finetune", strategy, to_yaml(cfg), parent=parent,
        dataset_manifest=store / MANIFEST,
        extra={"init": ft.init, "mode": ft.mode, "labels": n_labels, "strategy": why,
               "seed": cfg.seed})
    source = f"backbone from {parent}" if parent else "backbone from scratch"
    info(f"[bold]finetune[/bold] ({ft.init}, {ft.mode}): {source} -> {run_dir} "
         f"[dim]({why}{', resuming' if resumed else ''})[/dim]")
    with strategy.scope():
        backbone = (load_keras_artifact(parent, "backbone.keras", shape,
                                        "pretrain on this dataset, or use finetune.init=scratch")
                    if parent else build_backbone(shape, cfg.backbone))
        if ft.mode == "linear_probe":
            backbone.trainable = False
        model = classifier(backbone, manifest["num_classes"], hidden=ft.head_units,
                           dropout=ft.dropout)
        model.compile(optimizer=keras.optimizers.Adam(ft.learning_rate), loss=ft.loss,
                      metrics=["accuracy"], **compile_kwargs(cfg.trainer))
    one_hot = ft.loss == "categorical_crossentropy"
    bs = ft.batch_size or cfg.trainer.batch_size
    train_ds = pipeline.images(store, "train", batch_size=bs, shuffle=True, repeat=True,
                               one_hot=one_hot, cache=cfg.data.cache, seed=cfg.seed,
                               augment=ft.augment)
    val_ds, val_steps = None, None
    if manifest["splits"]["val"]["count"] > 0:
        val_ds = pipeline.images(store, "val", batch_size=bs, one_hot=one_hot,
                                 cache=cfg.data.cache, repeat=True)
        val_steps = pipeline.steps(store, "val", bs)
    history = fit(model, train_ds, steps_per_epoch=pipeline.steps(store, "train", bs),
                  epochs=ft.epochs or cfg.trainer.epochs, run_dir=run_dir, trainer=cfg.trainer,
                  title=f"finetune[{ft.init}]", val_ds=val_ds, validation_steps=val_steps,
                  monitor="val_accuracy", mode="max", restore_from=restore_from)
    if not chief:  # the chief writes the run; this worker's scratch dir is not a run
        keras.backend.clear_session()
        return run_dir
    runs.atomic_write_with(run_dir / "model.keras", model.save, suffix=".keras")
    final = {k: float(v[-1]) for k, v in history.items()}
    runs.update_manifest(run_dir, final_metrics=final, epochs=len(history["loss"]),
                         steps=optimizer_step(model))
    runs.mark_done(run_dir)
    shown = f"val_accuracy {final['val_accuracy']:.4f}" if "val_accuracy" in final else ""
    info(f"[green]finetune done[/green]: {run_dir / 'model.keras'}  {shown}")
    keras.backend.clear_session()
    return run_dir
