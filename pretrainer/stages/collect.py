"""collect: load a source, split it, write data/<dataset>/ (TFRecord shards + manifest)."""

from __future__ import annotations

from pathlib import Path

from pretrainer.config import Config
from pretrainer.console import console, info, table, warn
from pretrainer.data import sources
from pretrainer.data.store import MANIFEST, SPLITS, build_store, config_key, read_manifest, verify


def store_path(cfg: Config) -> Path:
    return Path(cfg.paths.data) / cfg.data.name


def run(cfg: Config) -> Path:
    store = store_path(cfg)
    key = config_key(cfg.data, cfg.seed)
    if (store / MANIFEST).is_file():
        manifest = read_manifest(store)
        if manifest.get("config_key") == key:
            bad = verify(store, manifest)
            if not bad:
                info(f"[green]collect[/green]: {store} is up to date (checksums verified)")
                _summary(store, manifest)
                return store
            info(f"collect: {len(bad)} shard(s) of {store} missing or corrupt; rebuilding")
    sources.get_source(cfg.data.source)  # an unknown name fails before any work
    what = cfg.data.path if cfg.data.source == "image_folder" else cfg.data.dataset
    info(f"[bold]collect[/bold]: {cfg.data.source}:{what} -> {store}")
    src = sources.load(cfg.data)
    if src.skipped:
        shown = "; ".join(f"{s['file']} ({s['reason']})" for s in src.skipped[:5])
        more = f" and {len(src.skipped) - 5} more" if len(src.skipped) > 5 else ""
        warn(f"skipped {len(src.skipped)} unreadable file(s): {shown}{more} "
             f"(all listed in {store / MANIFEST})")
    manifest = build_store(store, cfg.data, cfg.seed, src,
                           progress=lambda split, n: info(f"  wrote {split}: {n} examples"))
    c = manifest["contamination"]
    dups = {k: v for k, v in c.items() if k.endswith("_in_test") and v}
    if dups:
        listed = ", ".join(f"{v} in {k.removesuffix('_in_test')}" for k, v in dups.items())
        warn(f"exact duplicates of test examples: {listed}; "
             + ("removed (data.dedupe=true)" if c["deduped"]
                else "kept (set data.dedupe=true to drop them)"))
    _summary(store, manifest)
    return store


def _summary(store: Path, manifest: dict) -> None:
    rows = []
    for split in SPLITS:
        s = manifest["splits"][split]
        rows.append([split, s["count"], "yes" if s["labeled"] else "no", len(s["shards"])])
    console.print(table(f"{manifest['name']}: {manifest['shape']} {manifest['modality']}, "
                        f"{manifest['num_classes']} classes",
                        ["split", "examples", "labels", "shards"], rows))
