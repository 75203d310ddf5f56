"""pretrain: train a backbone on the unlabeled split with a pretext task; save backbone.keras."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pretrainer import files, runs
from pretrainer.config import Config, to_yaml
from pretrainer.console import esc, info
from pretrainer.data import pipeline
from pretrainer.data.store import MANIFEST, join, read_manifest
from pretrainer.models import build_backbone
from pretrainer.models.transformer import fixed_length
from pretrainer.pretext import get_pretext
from pretrainer.pretext.adversarial import GeneratedGrid
from pretrainer.pretext.health import EmbeddingRank
from pretrainer.stages import save_artifact, training_run, weights_checksum
from pretrainer.stages.collect import ensure_store
from pretrainer.strategy import is_multi_worker, worker_index
from pretrainer.train import (
    TrainingPlan,
    compile_kwargs,
    epoch_steps,
    fit,
    optimizer_step,
    setup,
)


def run(cfg: Config) -> Path:
    import keras

    store = ensure_store(cfg)
    manifest = read_manifest(store)
    pretext = get_pretext(cfg.pretext.name)
    strategy, why = setup(cfg.trainer, cfg.seed, {"modality": manifest.modality,
                                                  "backbone": cfg.backbone.name,
                                                  "pretext": cfg.pretext.name},
                          data_service=cfg.data.service)
    with training_run(cfg.paths.runs, cfg.experiment, "pretrain", strategy, to_yaml(cfg),
                      dataset_manifest=join(store, MANIFEST),
                      extra={"strategy": why, "seed": cfg.seed, "pretext": cfg.pretext.name,
                             "backbone": cfg.backbone.name}) as tr:
        info(f"[bold]pretrain[/bold]: {cfg.pretext.name} on {cfg.backbone.name} -> "
             f"{esc(tr.path)} [dim]({why}{', resuming' if tr.resumed else ''})[/dim]")
        model, backbone, history, val_ds = _train(cfg, pretext, store, manifest, strategy, tr)
        if is_multi_worker(strategy):
            info(f"worker {worker_index()}: {optimizer_step(model)} steps, final weights "
                 f"checksum {weights_checksum(model):.6f}")
        if tr.chief:  # a worker's scratch dir is not a run: the chief writes it
            _finish(pretext, tr.path, model, backbone, history, val_ds, manifest)
    keras.backend.clear_session()
    return tr.path


XLA_MIN_STEPS = 1000  # language pretexts: XLA on the CPU from this many steps in a run


def _train(cfg: Config, pretext, store, manifest, strategy, tr):
    """Build the pretext model on a new backbone and train it; (model, backbone,
    history, validation stream or None)."""
    shape = manifest.shape
    bcfg, targets, prepare = cfg.backbone, pretext.targets, None
    bs = cfg.trainer.batch_size
    text = manifest.kind.strings
    # Texts train in batches cut to their longest text (grouped by length) where XLA
    # compiles the step: each of trim_padding's few lengths once (~20 s on 2 cores),
    # repaid from about 1,000 steps on. Without XLA, varying lengths made some epochs
    # slower than fixed ones (23-41 s against 33-36 s on 32k lines), so they stay fixed;
    # so do static batches (a TPU) and workers (XLA was not measured with collectives).
    kwargs = compile_kwargs(cfg.trainer, xla_on_cpu=(
        text and not is_multi_worker(strategy)
        and pipeline.steps(store, "unlabeled", bs) * cfg.trainer.epochs >= XLA_MIN_STEPS))
    by_length = text and kwargs["jit_compile"] and not pipeline.static_batches()
    if text:
        bcfg, targets, prepare = _text_setup(cfg, pretext, store, tr.path)
        shape = (None,) if by_length else (bcfg.sequence_length,)
    if by_length:
        info("  pretrain: batches grouped by text length, XLA compiles each length once "
             "(the first epoch is slower)")
    with strategy.scope():
        backbone = build_backbone(shape, bcfg)
        model = pretext.build(backbone, cfg.pretext, bcfg, cfg.seed, **kwargs)

    def read(split: str, batch_size: int = bs, **kw):
        ds = pipeline.examples(store, split, batch_size=batch_size, labels=False,
                               cache=cfg.data.cache,
                               shuffle_buffer=cfg.data.shuffle_buffer, **kw)
        ds = ds.map(prepare) if prepare else ds
        return ds.map(pipeline.trim_padding) if by_length and split == "val" else ds

    def train_data(start_batch: int):
        def stream(start: int):
            return read("unlabeled", shuffle=True, repeat=True, seed=cfg.seed,
                        start_batch=start)

        ds = (pipeline.grouped_by_length(stream, start_batch, cfg.seed) if by_length
              else stream(start_batch))
        return ds.map(targets).prefetch(2)

    steps_per_epoch, note = epoch_steps(pipeline.steps(store, "unlabeled", bs),
                                        cfg.trainer.steps_per_execution)
    if note:
        info(f"  pretrain: {note}")
    val_ds, val_steps, vbs = None, None, bs
    if manifest.count("val") > 0:  # (its steps a multiple of steps/execution)
        vbs = pipeline.validation_batch(store, "val", bs, steps_per_epoch,
                                        cfg.trainer.steps_per_execution)
        val_ds = read("val", batch_size=vbs, repeat=True).map(targets)
        val_steps = pipeline.steps(store, "val", vbs)
    extra = []
    if pretext.embedding_rank:
        probe = val_ds if val_ds is not None else train_data(0)
        sample = next(iter(probe))[0]
        extra.append(EmbeddingRank(backbone, sample[:256]))
    if pretext.samples == "generated":
        extra.append(GeneratedGrid(tr.path / "plots", seed=cfg.seed))
    plan = TrainingPlan(steps_per_epoch, cfg.trainer.epochs, batch_size=bs,
                        validation_steps=val_steps, val_batch_size=vbs)
    history = fit(model, train_data, plan, run_dir=tr.path, trainer=cfg.trainer,
                  title="pretrain", val_ds=val_ds, restore_from=tr.restore_from,
                  callbacks=tuple(extra))
    if by_length:
        backbone = fixed_length(backbone, bcfg)
    return model, backbone, history, val_ds


def _finish(pretext, run_dir: Path, model, backbone, history: dict, val_ds,
            manifest) -> None:
    """Save the backbone; record the pretext's health (its own measure of learning)."""
    save_artifact(run_dir, "backbone.keras", backbone)
    health_key = (pretext.health if pretext.health == "effective_rank" or val_ds is None
                  else f"val_{pretext.health}")
    health = float(history[health_key][-1]) if health_key in history else None
    if health_key not in history:  # e.g. no PSNR for table rows: the reconstruction loss
        health_key = "val_loss" if "val_loss" in history else "loss"
        health = float(history[health_key][-1])
    if (val_ds is not None and pretext.samples == "reconstructions"
            and manifest.kind.pixels):
        _save_reconstructions(model, val_ds, run_dir / "plots" / "reconstructions.png")
    runs.update_manifest(run_dir, health={health_key: health},
                         final_loss=float(history["loss"][-1]), epochs=len(history["loss"]),
                         steps=optimizer_step(model))
    info(f"[green]pretrain done[/green]: {esc(run_dir / 'backbone.keras')}"
         + (f"  ({health_key} {health:.2f})" if health is not None else ""))


def _save_reconstructions(model, val_ds, path: Path, n: int = 8) -> None:
    """Originals (top row) and reconstructions (bottom row): a label-free sanity check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, _ = next(iter(val_ds))
    x = x.numpy()[:n]
    # a direct call, not predict(): under a multi-worker strategy predict would need the
    # other workers, which have finished by now
    x_hat = np.asarray(model(x, training=False), dtype=np.float32)
    fig, axes = plt.subplots(2, len(x), figsize=(1.2 * len(x), 2.6), squeeze=False)
    for i in range(len(x)):
        for row, img in enumerate((x[i], x_hat[i])):
            ax = axes[row, i]
            ax.imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1)
            ax.axis("off")
    fig.suptitle("input (top) / reconstruction (bottom)", fontsize=8)
    files.atomic_write_with(path, lambda p: fig.savefig(p, format="png", dpi=100), suffix=".png")
    plt.close(fig)


def _text_setup(cfg: Config, pretext, store, run_dir: Path):
    """WordPiece vocabulary from the unlabeled split (saved as vocab.txt in the run), the
    backbone config sized to it, and the tokenize / targets maps."""
    import dataclasses

    from pretrainer.data.modalities.text import (
        FIT_QUANTILE,
        VOCAB_FILE,
        fitted_length,
        run_vocabulary,
        tokenizer,
    )

    vocab = run_vocabulary(run_dir, lambda: pipeline.texts(
        store, "unlabeled", batch_size=512, labels=False, cache=False),
        cfg.backbone.vocabulary_size)  # a resumed run keeps its vocab.txt
    info(f"  WordPiece vocabulary: {len(vocab)} tokens -> {esc(Path(run_dir) / VOCAB_FILE)}")
    length = cfg.backbone.sequence_length
    if cfg.backbone.fit_length:  # recorded, so a resumed run builds the same shapes
        length = runs.read_manifest(run_dir).sequence_length or fitted_length(
            vocab, pipeline.texts(store, "unlabeled", batch_size=512, labels=False,
                                  cache=False), length)
        runs.update_manifest(run_dir, sequence_length=length)
        if length < cfg.backbone.sequence_length:
            info(f"  sequence length: {length} tokens, enough for {FIT_QUANTILE:g} % of the pool's "
                 f"texts (backbone.sequence_length={cfg.backbone.sequence_length} is the "
                 f"most; backbone.fit_length=false keeps it)")
    bcfg = dataclasses.replace(cfg.backbone, vocabulary_size=len(vocab), sequence_length=length)
    tok = tokenizer(vocab, bcfg.sequence_length)
    targets = (pretext.targets_for(len(vocab), bcfg.sequence_length) if pretext.targets_for
               else pretext.targets)
    return bcfg, targets, lambda texts: tok(texts)
