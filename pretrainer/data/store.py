"""The dataset store every stage reads: sharded TFRecord splits + manifest.json.

data/<dataset>/manifest.json
data/<dataset>/<split>-00000-of-000NN.tfrecord

Splits: `unlabeled` (pretraining pool, labels dropped), `train` (the few kept
labels), `val`, `test`. A store is built in a temporary directory and renamed
into place, so a reader never sees shards a manifest does not vouch for.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

from pretrainer import __version__
from pretrainer.config import DataConfig
from pretrainer.data import modalities
from pretrainer.data.records import StoreManifest
from pretrainer.data.splits import SPLITS, check_contamination, shuffled, split_arrays
from pretrainer.errors import DataError
from pretrainer.files import any_sha256


# Paths go through tf.io.gfile, so a store can live on gs:// (or any filesystem
# TensorFlow knows) as well as on local disk. pathlib would fold "gs://" to "gs:/".
def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _remote(path: str) -> bool:
    return "://" in str(path)


def join(store, name: str) -> str:
    return f"{str(store).rstrip('/')}/{name}"


def _parent_and_name(store) -> tuple[str, str]:
    s = str(store).rstrip("/")
    parent, _, name = s.rpartition("/")
    return parent or ".", name


def _write_text(path: str, text: str) -> None:
    """Write then rename, so a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with _gfile().GFile(tmp, "w") as f:
        f.write(text)
    _gfile().rename(tmp, path, overwrite=True)
MANIFEST = "manifest.json"
# 2: every split is written in a seeded random order (format 1 kept the source's
# order, e.g. class folders one after another, which trained broken models).
FORMAT_VERSION = 2
ORDER = {"stratified": {"order": "seeded random permutation of every split"},  # data.split_rule
         "hash": {"order": "by a keyed hash of each record's content", "split_rule": "hash"}}


def _example(kind: modalities.Modality, row, label, regression: bool) -> bytes:
    import tensorflow as tf

    f = tf.train.Feature
    feats = kind.example_features(row)
    if regression:
        feats["target"] = f(float_list=tf.train.FloatList(
            value=[float("nan") if label is None else float(label)]))
    else:
        feats["label"] = f(int64_list=tf.train.Int64List(value=[-1 if label is None
                                                                 else int(label)]))
    # deterministic: map entries in key order, whatever process (or Beam worker, whose
    # protobuf may order maps by hash) serialises it, so shard checksums are reproducible
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString(
        deterministic=True)


def write_shard(out_dir, name: str, rows, labels, modality: str, regression: bool,
                advance=None, tmp_suffix: str = "tmp") -> dict:
    """One shard under a temporary name, renamed into place: {file, count, sha256}."""
    import tensorflow as tf

    final, tmp = join(out_dir, name), join(out_dir, f".{name}.{tmp_suffix}")
    kind = modalities.get(modality)
    with tf.io.TFRecordWriter(tmp) as writer:
        for i, row in enumerate(rows):
            writer.write(_example(kind, row, None if labels is None else labels[i],
                                  regression))
            if advance and i % 256 == 255:
                advance(256)
    if advance:
        advance(len(rows) % 256)
    _gfile().rename(tmp, final, overwrite=True)
    return {"file": name, "count": len(rows), "sha256": any_sha256(final)}


def shard_bounds(n: int, shard_size: int, cuts: Optional[list] = None) -> list[tuple]:
    """(lo, hi) of each shard of n records: `cuts` (hash rule) or shard_size each; >= 1."""
    cuts = cuts or [min(shard_size, n - lo) for lo in range(0, n, shard_size)] or [0]
    return [(end - c, end) for c, end in zip(cuts, np.cumsum(cuts).tolist(), strict=True)]


def write_split(out_dir, split: str, x, y: Optional[np.ndarray], shard_size: int,
                modality: str = "image", regression: bool = False, done: Optional[dict] = None,
                on_shard=None, advance=None, cuts: Optional[list] = None) -> list[dict]:
    """Write one split as TFRecord shards (`cuts`: see shard_bounds); return [{file,
    count, sha256}]. `done` maps shard names already written by an interrupted collect to their
    record; such shards are verified and kept instead of rewritten. Each shard is
    written under a temporary name and renamed, then reported to `on_shard`.
    """
    bounds = shard_bounds(len(x), shard_size, cuts)
    shards = []
    for s, (lo, hi) in enumerate(bounds):
        name = f"{split}-{s:05d}-of-{len(bounds):05d}.tfrecord"
        prior = (done or {}).get(name)
        final = join(out_dir, name)
        if (prior and prior["count"] == hi - lo and _gfile().exists(final)
                and any_sha256(final) == prior["sha256"]):
            shards.append(prior)
            if advance:
                advance(hi - lo)
            continue
        record = write_shard(out_dir, name, x[lo:hi], None if y is None else y[lo:hi],
                             modality, regression, advance)
        shards.append(record)
        if on_shard:
            on_shard(record)
    return shards


def config_key(cfg: DataConfig, seed: int) -> str:
    """What decides a store's content: a rerun with the same key reuses the store."""
    fields = {k: getattr(cfg, k) for k in ("source", "dataset", "path", "image_size", "color",
                                           "extra_unlabeled", "text_split", "target", "task",
                                           "dedupe", "label_seed", "labeled_fraction",
                                           "labels_per_class", "val_fraction", "test_fraction",
                                           "max_samples", "max_test", "shard_size")}
    fields.update({"split_rule": cfg.split_rule} if cfg.split_rule != "stratified" else {},
                  seed=seed, format=FORMAT_VERSION)  # (no split_rule: no recorded key moves)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


LABEL_FIELDS = ("label_seed", "labeled_fraction", "labels_per_class")


def split_key(cfg: DataConfig, seed: int) -> str:
    """What decides every split but `train`: stores with the same split key hold the same
    unlabeled, val and test shards (the labeled subset is drawn after those)."""
    import dataclasses

    return config_key(dataclasses.replace(cfg, **{k: DataConfig.__dataclass_fields__[k].default
                                                  for k in LABEL_FIELDS}), seed)


def _link_or_copy(src: str, dst: str) -> None:
    if _remote(src) or _remote(dst):
        _gfile().copy(src, dst, overwrite=True)
        return
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copyfile(src, dst)


def has_manifest(store) -> bool:
    path = join(store, MANIFEST)
    return _gfile().exists(path) if _remote(path) else Path(path).is_file()


def read_manifest(store) -> StoreManifest:
    path = join(store, MANIFEST)
    if not has_manifest(store):
        raise DataError(f"No dataset store at {store} (missing {MANIFEST}). "
                        f"Run `pretrainer collect` first")
    try:
        if not _remote(path):
            return StoreManifest.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        with _gfile().GFile(path, "r") as f:
            return StoreManifest.from_json(json.loads(f.read()))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc.msg}); rerun `pretrainer collect`") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{path} is not a store manifest ({type(exc).__name__}: {exc}); "
                        f"rerun `pretrainer collect`") from exc


def verify(store: Path, manifest: Optional[StoreManifest] = None) -> list[str]:
    """Names of shards that are missing or whose checksum differs from the manifest."""
    manifest = manifest or read_manifest(store)
    bad = []
    for split in manifest.splits.values():
        for shard in split.shards:
            path = join(store, shard.file)
            if not _gfile().exists(path) or any_sha256(path) != shard.sha256:
                bad.append(shard.file)
    return bad


def plan_splits(src, cfg: DataConfig, seed: int, digests=None
                ) -> tuple[dict, dict, Optional[dict]]:
    """({split: (x, y)} in stored order, contamination report, {split: records per shard}
    or None): every rule that decides what a store holds (data.split_rule=hash:
    hashsplit.py). `digests`: splits.check_contamination's (Beam: x are record numbers)."""
    if len(src.x_pool) == 0:
        shown = "; ".join(f"{s['file']} ({s['reason']})" for s in src.skipped[:3])
        raise DataError("The source gave no readable examples"
                        + (f": all {len(src.skipped)} file(s) were skipped, e.g. {shown}"
                           if src.skipped else ""))
    if cfg.split_rule == "hash":
        from pretrainer.data import hashsplit
        return hashsplit.plan_arrays(src, cfg, seed)
    arrays = split_arrays(src, cfg, seed)
    if src.x_extra is not None and len(src.x_extra):
        arrays["unlabeled"] = (np.concatenate([arrays["unlabeled"][0], src.x_extra]), None)
    contamination = (check_contamination(arrays, dedupe=cfg.dedupe) if digests is None else
                     check_contamination(arrays, dedupe=cfg.dedupe, digests=digests))
    return shuffled(arrays, seed), contamination, None


def staging_dir(store, cfg: DataConfig, seed: int) -> str:
    """Where a store is written before it is renamed into place (kept by a collect that
    was cut, for the next one with the same config)."""
    parent, name = _parent_and_name(store)
    _gfile().makedirs(parent)
    return join(parent, f".{name}.partial-{config_key(cfg, seed)}")


def split_entry(split: str, y, shards: list[dict], class_names, regression: bool) -> dict:
    """A split's entry in the manifest."""
    per_class = ({} if y is None or regression else
                 {class_names[int(c)]: int(n)
                  for c, n in zip(*np.unique(y, return_counts=True), strict=True)})
    return {"count": sum(s["count"] for s in shards) if shards else 0,
            "labeled": split != "unlabeled", "per_class": per_class, "shards": shards}


def publish(store, staging: str, cfg: DataConfig, seed: int, src, arrays: dict,
            splits: dict, contamination: dict, shape: Optional[list] = None) -> StoreManifest:
    """The manifest last, then the store renamed into place (`shape`: see _shape)."""
    manifest = _manifest_json(cfg, seed, src, arrays, splits, contamination,
                              config_key(cfg, seed), shape)
    _publish(store, staging, manifest, {sh["file"] for sp in splits.values()
                                        for sh in sp["shards"]})
    return StoreManifest.from_json(manifest)


def build_store(store: Path, cfg: DataConfig, seed: int, src, progress=None,
                advance=None, share_from=None) -> StoreManifest:
    """Split `src` (a SourceData) and write the store at `store`; return the manifest.

    Shards go to a staging folder named after the config key; a collect killed
    part-way leaves finished shards there and the next run with the same config
    keeps them. The manifest is written last and the folder renamed into place,
    so a store's manifest never claims a shard that is not complete.

    `share_from`: another store; when it has the same split key (only the labeled subset
    differs, as in study cells), its unlabeled, val and test shards are hard-linked, not
    written again.
    """
    arrays, contamination, cuts = plan_splits(src, cfg, seed)
    staging = staging_dir(store, cfg, seed)
    _gfile().makedirs(staging)
    splits = _write_splits(staging, cfg, seed, src, arrays, progress, advance, share_from,
                           cuts)
    return publish(store, staging, cfg, seed, src, arrays, splits, contamination)


def _write_splits(staging: str, cfg: DataConfig, seed: int, src, arrays: dict, progress,
                  advance, share_from, cuts: Optional[dict] = None) -> dict:
    """Each split's shards into `staging` (kept from an interrupted collect, or linked from
    `share_from` when its split key matches); {split: its manifest entry}."""
    gfile = _gfile()
    regression = src.task == "regression"
    progress_file = join(staging, "progress.json")
    done = {}
    if gfile.exists(progress_file):
        with gfile.GFile(progress_file, "r") as f:
            done = json.loads(f.read())
    if done:
        progress and progress("resume", len(done))

    def record(shard: dict) -> None:
        done[shard["file"]] = shard
        _write_text(progress_file, json.dumps(done))

    skey = split_key(cfg, seed)
    shared = {}
    if share_from is not None and has_manifest(share_from):
        base = read_manifest(share_from)
        if base.split_key == skey:
            shared = {k: base.splits[k] for k in ("unlabeled", "val", "test")}
    splits = {}
    for split in SPLITS:
        x, y = arrays[split]
        if split in shared and shared[split].count == len(x):
            for shard in shared[split].shards:
                target = join(staging, shard.file)
                if not gfile.exists(target):
                    _link_or_copy(join(share_from, shard.file), target)
            splits[split] = shared[split].to_json()
            if advance:
                advance(len(x))
            continue
        shards = write_split(staging, split, x, y, cfg.shard_size, src.modality, regression,
                             done=done, on_shard=record, advance=advance,
                             cuts=None if cuts is None else cuts[split])
        splits[split] = split_entry(split, y, shards, src.class_names, regression)
        if progress:
            progress(split, len(x))
    return splits


def _manifest_json(cfg: DataConfig, seed: int, src, arrays: dict, splits: dict,
                   contamination: dict, key: str, shape: Optional[list] = None) -> dict:
    """The store's manifest.json as written (StoreManifest reads it back)."""
    regression = src.task == "regression"
    kind = modalities.get(src.modality)
    manifest = {
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "name": cfg.name,
        "modality": src.modality,
        "task": "none" if src.y_pool is None else src.task,
        "feature_spec": {**kind.stored,
                         **({"target": "float32, NaN = none"} if regression
                            else {"label": "int64, -1 = none"})},
        "shape": kind.record_shape(src.x_pool) if shape is None else shape,
        "dtype": kind.dtype,
        "num_classes": 0 if regression else len(src.class_names),
        "class_names": [] if regression else list(src.class_names),
        "source": {"name": cfg.source, "dataset": cfg.dataset, **src.info},
        "skipped": {"count": len(src.skipped), "files": src.skipped[:1000]},
        "contamination": contamination,
        "seed": seed,
        "labeled_fraction": cfg.labeled_fraction,
        "labels_per_class": cfg.labels_per_class,
        "config_key": key,
        "split_key": split_key(cfg, seed),
        **ORDER[cfg.split_rule],
        "splits": splits,
        **src.extra_manifest,
    }
    if kind.standardized:  # standardisation statistics from the pretraining pool only
        pool = np.asarray(arrays["unlabeled"][0], np.float64)
        std = pool.std(axis=0)
        manifest.update(feature_stats={"mean": pool.mean(axis=0).tolist(),
                                       "std": np.where(std > 1e-12, std, 1.0).tolist()})
    return manifest


def _publish(store, staging: str, manifest: dict, wanted: set) -> None:
    """Leftovers out of `staging`, the manifest last, then the folder renamed into place
    (object stores, which cannot rename folders: the shards moved in, the manifest last)."""
    gfile = _gfile()
    for leftover in gfile.listdir(staging):  # progress file, shards of another layout
        if leftover not in wanted:
            gfile.remove(join(staging, leftover))
    text = json.dumps(manifest, indent=2) + "\n"
    if _remote(store):
        # Object stores cannot rename folders: move the shards in, then write the
        # manifest last; until then the store has no manifest and reads as missing.
        if gfile.exists(join(store, MANIFEST)):
            gfile.remove(join(store, MANIFEST))
        gfile.makedirs(str(store))
        for f in wanted:
            gfile.rename(join(staging, f), join(store, f), overwrite=True)
        _write_text(join(store, MANIFEST), text)
        gfile.rmtree(staging)
        return
    _write_text(join(staging, MANIFEST), text)
    # Swap in the finished store; the old one (if any) goes only after the new one is whole.
    local = Path(store)
    old = None
    if local.exists():
        old = local.with_name(f".{local.name}.old-{os.getpid()}")
        os.replace(local, old)
    os.replace(staging, local)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- where a config's store is

def store_path(cfg) -> str:
    """Where the store for this data config lives: data/<dataset>, or, when that holds
    another data config, data/<dataset>@<config key> beside it, so stores for different
    configs live side by side and none is rebuilt under a run trained on it. A store of
    an older format at data/<dataset> is unusable and is rebuilt in place.
    (A string: paths.data may be gs://..., which pathlib would mangle.)"""
    base = join(cfg.paths.data, cfg.data.name)
    key = config_key(cfg.data, store_seed(cfg))
    manifest = intact_manifest(base)
    if manifest is None:  # none, or damaged: this config's own store if it has one
        return f"{base}@{key}" if intact_manifest(f"{base}@{key}") else base
    if manifest.config_key == key or manifest.format_version != FORMAT_VERSION:
        return base
    return f"{base}@{key}"


def intact_manifest(store: str) -> Optional[StoreManifest]:
    """The store's manifest, or None when it has none or one that cannot be read (cut by
    a full disk or a kill): such a store is collected again, in place."""
    if not has_manifest(store):
        return None
    try:
        return read_manifest(store)
    except DataError:
        return None


def store_seed(cfg) -> int:
    """The seed that draws a store's splits and order (data.split_seed, else seed)."""
    return cfg.seed if cfg.data.split_seed is None else cfg.data.split_seed
