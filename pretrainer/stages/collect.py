"""collect: load a source, split it, write data/<dataset>/ (TFRecord shards + manifest)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Optional

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pretrainer import files
from pretrainer.config import Config
from pretrainer.console import console, esc, info, quiet_tensorflow, table, warn
from pretrainer.data import sources
from pretrainer.data.records import StoreManifest
from pretrainer.data.store import (
    FORMAT_VERSION,
    MANIFEST,
    SPLITS,
    build_store,
    config_key,
    has_manifest,
    intact_manifest,
    join,
    store_path,
    store_seed,
    verify,
)
from pretrainer.errors import DataError


@contextlib.contextmanager
def store_lock(store: str):
    """One writer per store: a second collect of it waits (and says so) for the first.
    On gs:// and other object stores (no flock there) the lock is an object beside the
    store (pretrainer.data.object_lock)."""
    if "://" in store:
        from pretrainer.data import object_lock

        with object_lock.held(store, on_wait=lambda msg: info(f"collect: {msg}")):
            yield
        return
    parent, _, name = store.rstrip("/").rpartition("/")
    lock = Path(parent or ".") / f".{name}.lock"
    files.acquire_lock(lock, f"dataset store {store}", wait=True,
                      on_wait=lambda msg: info(f"collect: {msg}"))
    try:
        yield
    finally:
        files.release_lock(lock)


def ensure_store(cfg: Config) -> str:
    """The store the config names, collected first if it is missing, was written by an
    older format (which kept the source's order), or holds another data config."""
    store = store_path(cfg)
    manifest = intact_manifest(store)
    if manifest is not None:
        if manifest.config_key == config_key(cfg.data, store_seed(cfg)):
            return store
        info(f"the dataset store at {esc(store)} was written by store format "
             f"{manifest.format_version} (now {FORMAT_VERSION}, which shuffles every "
             f"split); rebuilding it")
    elif has_manifest(store):
        info(f"the manifest of the dataset store at {esc(store)} cannot be read; collecting "
             f"the store again")
    else:
        _require_path(cfg)
        info(f"no dataset store at {esc(store)} yet; collecting it first")
    run(cfg)
    return store


def run(cfg: Config, share_from: Optional[str] = None) -> str:
    """Build (or verify) the store the config names; `share_from`: a store whose
    unlabeled/val/test shards may be linked instead of written (study cells)."""
    store = store_path(cfg)
    key = config_key(cfg.data, store_seed(cfg))
    with store_lock(store):
        return _collect(cfg, store, key, share_from)


PATH_SOURCES = {"image_folder": "DIR (a folder of images)", "csv": "FILE.csv",
                "text_files": "DIR (a folder of .txt files)",
                "idx": "DIR (MNIST-layout IDX files)"}  # the sources that read data.path


def _require_path(cfg: Config) -> None:
    """A source that reads data.path without one: say which paths built the stores of this
    data group (a user who collected with data.path=... and then ran pretrain without it
    got "collecting it first" and then "needs data.path"). Stores are listed from their
    manifests; nothing is read from the source."""
    if (cfg.data.source not in PATH_SOURCES or cfg.data.path
            or (cfg.data.source == "csv" and cfg.data.dataset in sources.BUNDLED_CSV)):
        return
    root = Path(cfg.paths.data)
    built = []
    if "://" not in str(root) and root.is_dir():
        for folder in sorted(root.glob(f"{cfg.data.name}*")):
            manifest = intact_manifest(str(folder))
            path = manifest.source.get("path") if manifest else None
            if path and folder.name.split("@")[0] == cfg.data.name:
                built.append(f"data.path='{path}' ({folder})")
    hint = (f"; the stores of data '{cfg.data.name}' here were built with "
            f"{', '.join(dict.fromkeys(built))}: give every verb the same overrides"
            if built else "")
    raise DataError(f"data.source={cfg.data.source} needs "
                    f"data.path={PATH_SOURCES[cfg.data.source]}{hint}")


def _collect(cfg: Config, store: str, key: str, share_from: Optional[str]) -> str:
    manifest = intact_manifest(store)
    if manifest is None and has_manifest(store):
        info(f"collect: {esc(join(store, MANIFEST))} cannot be read (cut or not JSON); "
             f"rebuilding the store")
    if manifest is not None:
        if manifest.config_key == key:
            bad = verify(store, manifest)
            if not bad:
                info(f"[green]collect[/green]: {esc(store)} is up to date (checksums verified)")
                _summary(store, manifest)
                return store
            info(f"collect: {len(bad)} shard(s) of {esc(store)} missing or corrupt; rebuilding")
    sources.get_source(cfg.data.source)  # an unknown name fails before any work
    _require_path(cfg)
    what = cfg.data.path if cfg.data.source == "image_folder" else cfg.data.dataset
    info(f"[bold]collect[/bold]: {esc(cfg.data.source)}:{esc(what)} -> {esc(store)}")
    if cfg.collect.beam:
        manifest = _collect_beam(cfg, store)
    else:
        manifest = _collect_inprocess(cfg, store, share_from)
    c = manifest.contamination
    dups = {k: v for k, v in c.items() if k.endswith("_in_test") and v}
    if dups:
        listed = ", ".join(f"{v} in {k.removesuffix('_in_test')}" for k, v in dups.items())
        warn(f"exact duplicates of test examples: {listed}; "
             + ("removed (data.dedupe=true)" if c["deduped"]
                else "kept (set data.dedupe=true to drop them)"))
    _summary(store, manifest)
    return store


def _collect_beam(cfg: Config, store: str) -> StoreManifest:
    from pretrainer.data import beam, beam_hash

    info(f"collect: an Apache Beam pipeline on {esc(cfg.collect.runner)} "
         f"(the same store as collect.runner=inprocess)")
    quiet_tensorflow()
    beam.require_beam()
    # a CSV is one file, read by the launcher either way (beam.py); folders stream under
    # the hash rule
    streamed = cfg.data.split_rule == "hash" and cfg.data.source != "csv"
    if not streamed and cfg.data.source != "csv":
        info("  (data.split_rule=stratified: this process holds ~0.4 KiB per record for the "
             "plan; data.split_rule=hash streams it, docs/data.md)")
    manifest = (beam_hash if streamed else beam).collect(store, cfg, store_seed(cfg),
                                                         lambda line: info(esc(line)))
    skipped = manifest.skipped
    if skipped["count"]:
        _warn_skipped(skipped["files"], skipped["count"], store)
    return manifest


def _warn_skipped(listed: list, count: int, store: str) -> None:
    shown = "; ".join(f"{s['file']} ({s['reason']})" for s in listed[:5])
    more = f" and {count - 5} more" if count > 5 else ""
    warn(f"skipped {count} unreadable file(s): {shown}{more} "
         f"(all listed in {join(store, MANIFEST)})")


def _collect_inprocess(cfg: Config, store: str, share_from: Optional[str]) -> StoreManifest:
    if cfg.data.source != "image_folder":  # (other loaders may import TensorFlow)
        quiet_tensorflow()
    src = sources.load(cfg.data)  # image folders decode in forks, before TensorFlow loads
    quiet_tensorflow()
    if src.skipped and len(src.x_pool):  # (all skipped: build_store says so and stops)
        _warn_skipped(src.skipped, len(src.skipped), store)
    def said(split: str, n: int) -> None:
        if split == "resume":
            info(f"  resuming an interrupted collect: {n} shard(s) already written")
        elif not console.is_terminal:
            info(f"  wrote {split}: {n} examples")

    total = sum(len(a) for a in (src.x_pool, src.x_test, src.x_val, src.x_extra) if a is not None)
    with Progress(TextColumn("collect"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console,
                  transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("", total=total, rate="")
        t0 = time.perf_counter()

        def advance(n: int) -> None:
            bar.advance(task, n)
            done = bar.tasks[0].completed
            bar.update(task, rate=f"{done / max(time.perf_counter() - t0, 1e-9):.0f} ex/s")

        manifest = build_store(store, cfg.data, store_seed(cfg), src, progress=said,
                               advance=advance, share_from=share_from)
    return manifest


def _summary(store: str, manifest: StoreManifest) -> None:
    rows = []
    for split in SPLITS:
        s = manifest.splits[split]
        rows.append([split, s.count, "yes" if s.labeled else "no", len(s.shards)])

    what = (f"{manifest.num_classes} classes" if not manifest.regression
            else "regression target")
    console.print(table(f"{manifest.name}: {manifest.modality} {manifest.shape}, {what}",
                        ["split", "examples", "labels", "shards"], rows))
