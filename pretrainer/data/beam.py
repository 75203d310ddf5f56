"""collect as an Apache Beam pipeline (`collect.runner=beam`, or a Beam runner's name).

For sources too big for one machine to decode in reasonable time. The work is cut so
that Beam only ever moves small things between stages, and the store it writes is the
one the in-process path writes, byte for byte (manifest, splits, record order, shard
checksums):

1. list (here): the same listing as in-process (`folders.list_folder`,
   `textfiles.list_text_files`), so every file gets the same number;
2. scan (Beam): each chunk of images / each text file is decoded on a worker, which
   sends back only what the split needs: which records decoded (skips with their
   reasons), how many documents a file holds, and a 16-byte digest of each record;
3. plan (here): the split rules of `splits.py` run on record numbers instead of
   records (`split_arrays`, `check_contamination` on the digests, `shuffled`), so the
   splits and the seeded order are those of the in-process path by construction;
4. write (Beam): one element per shard, holding its records' references in order; a
   worker decodes them again (checking each digest: a file changed since the scan is
   an error, not a silent difference) and writes the shard;
5. publish (here): the manifest, as in-process, and the folder renamed into place.

Memory: records are decoded twice and never held together; the launching process
keeps ~0.45 KiB per record (the listing's paths, the plan's arrays, 16 bytes of digest:
measured at 100k images, benchmarks/beam_collect.py, docs/data.md) - under the default
stratified rule; data.split_rule=hash streams the plan (beam_hash.py). Elements travel
through JSON-lines files, not the runner's memory. A CSV is one file (quoted cells may
hold newlines, so it cannot be cut safely): it is read here as in-process and only its
shards are written by the pipeline.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from pretrainer.data import modalities
from pretrainer.data import splits as splitting
from pretrainer.data.sources import SourceData
from pretrainer.errors import DataError

SCAN_CHUNK = 256  # images per scan element: enough work per element to hide Beam's overhead


def digest(payload: bytes) -> str:
    """The contamination check's digest of a record (splits.digest), as hex for JSON."""
    return splitting.digest(payload).hex()


def require_beam():
    try:
        import apache_beam as beam
    except ImportError as exc:
        raise DataError("collect.runner needs Apache Beam: pip install 'pretrainer[beam]' "
                        "(or collect with collect.runner=inprocess)") from exc
    return beam


# --------------------------------------------------------------- what workers run

def _image_rows(paths: list[str], size, mode: str, root: str) -> list[Optional[np.ndarray]]:
    """Each path decoded as in-process (`folders._decode_chunk`), None where skipped."""
    from pretrainer.data.folders import _decode_chunk

    arr, kept, _ = _decode_chunk([Path(p) for p in paths], size, mode, root)
    rows: list[Optional[np.ndarray]] = [None] * len(paths)
    for row, i in zip(arr, kept, strict=True):
        rows[i] = row
    return rows


def scan_unit(unit: dict) -> str:
    """One scan element -> a JSON line: what each record of it is worth to the plan."""
    return json.dumps({"unit": unit["unit"], **scanned(unit)})


def scanned(unit: dict) -> dict:
    """A scan element decoded: {kept (image indices) or docs (a text file's count),
    digests (hex, 16 bytes a record), skipped, codecs (text)}."""
    if unit["kind"] == "image":
        from pretrainer.data.folders import _decode_chunk

        paths = [Path(p) for p in unit["paths"]]
        arr, kept, skipped = _decode_chunk(paths, tuple(unit["size"]), unit["mode"],
                                           unit["root"])
        out = {"kept": kept, "digests": "".join(digest(row.tobytes()) for row in arr),
               "skipped": skipped}
    else:
        from pretrainer.data.textfiles import read_file

        docs, skipped, codecs = read_file(Path(unit["path"]), Path(unit["root"]),
                                          unit["how"], unit["encoding"])
        out = {"docs": len(docs), "digests": "".join(digest(d.encode("utf-8")) for d in docs),
               "skipped": skipped, "codecs": codecs}
    return out


def write_shard(task: dict) -> str:
    """One write element -> its shard in the staging folder; a JSON line of its record."""
    from pretrainer.data import store

    rows = task.get("rows")
    if rows is None:
        rows = _materialise(task)
    record = store.write_shard(task["staging"], task["file"], rows, task["labels"],
                               task["modality"], task["regression"],
                               tmp_suffix=f"tmp-{os.getpid()}")
    return json.dumps({"split": task["split"], **record})


def _materialise(task: dict) -> list:
    """The task's records decoded again from their files, each checked against its scan
    digest."""
    refs, digests = task["refs"], task["digests"]
    if task["modality"] == "image":
        rows = _image_rows(list(refs), tuple(task["size"]), task["mode"], task["root"])
        payloads = [None if r is None else r.tobytes() for r in rows]
    else:
        from pretrainer.data.textfiles import read_file

        docs_of: dict[str, list[str]] = {}  # each file read once per shard
        rows = []
        for path, index in refs:
            if path not in docs_of:
                docs_of[path] = read_file(Path(path), Path(task["root"]), task["how"],
                                          task["encoding"])[0]
            docs = docs_of[path]
            rows.append(docs[index] if index < len(docs) else None)
        payloads = [None if r is None else r.encode("utf-8") for r in rows]
    for ref, payload, want in zip(refs, payloads, digests, strict=True):
        if payload is None or digest(payload) != want:
            raise DataError(f"{ref} changed while collect ran (its content differs from "
                            f"the scan's); run collect again")
    return rows


# --------------------------------------------------------------- the launching side

@dataclass
class Listing:
    """Every record the source may hold, by number, and what the scan units are."""
    modality: str
    units: list[dict]
    info: dict
    class_names: list[str]
    # per part (pool, test, val): per unit, the labels of its candidate records
    parts: dict = field(default_factory=dict)
    writer: dict = field(default_factory=dict)  # what write_shard needs besides refs

    @property
    def kind(self) -> modalities.Modality:
        return modalities.get(self.modality)


def list_images(cfg) -> Listing:
    from pretrainer.data.folders import list_folder

    listing = list_folder(cfg.path, cfg.image_size, cfg.color)
    root, size, mode = str(listing["root"]), listing["size"], listing["mode"]
    units, parts = [], {}
    for part, (files, labels, _) in listing["parts"].items():
        parts[part] = []
        for lo in range(0, len(files), SCAN_CHUNK):
            units.append({"unit": len(units), "kind": "image", "root": root, "size": list(size),
                          "mode": mode, "paths": [str(f) for f in files[lo:lo + SCAN_CHUNK]]})
            parts[part].append((units[-1]["unit"],
                                None if labels is None else labels[lo:lo + SCAN_CHUNK]))
    info = {"path": str(cfg.path), "layout": listing["layout"],
            "color": "grayscale" if mode == "L" else "rgb", "image_size": list(size),
            "empty_class_folders": listing["empty_classes"]}
    return Listing("image", units, info, listing["class_names"], parts,
                   {"root": root, "size": list(size), "mode": mode})


def list_texts(cfg) -> Listing:
    from pretrainer.data.textfiles import list_text_files

    listing = list_text_files(cfg.path)
    root = str(listing["root"])
    units = [{"unit": i, "kind": "text", "root": root, "path": str(f), "how": cfg.text_split,
              "encoding": cfg.encoding, "label": c}
             for i, (f, c) in enumerate(listing["files"])]
    info = {"path": str(cfg.path), "layout": listing["layout"], "text_split": cfg.text_split}
    return Listing("text", units, info, listing["class_names"],
                   {"pool": [(u["unit"], u["label"]) for u in units]},
                   {"root": root, "how": cfg.text_split, "encoding": cfg.encoding,
                    "layout": listing["layout"]})


@dataclass
class Plan:
    """A SourceData whose examples are record numbers, and what each number refers to."""
    src: SourceData
    refs: list  # record number -> image path, or (text path, document index)
    digests: np.ndarray  # [records, 16] uint8: record number -> digest of its content

    def digest_bytes(self, ids) -> list[bytes]:
        return [row.tobytes() for row in self.digests[np.asarray(ids, np.int64)]]


def plan_from_scan(listing: Listing, scanned: dict[int, dict]) -> Plan:
    """The SourceData of record numbers that the in-process loader would have given."""
    refs, digests, skipped, codecs = [], [], [], {}  # digests: one uint8 array per unit
    xs, ys = {}, {}
    for part, entries in listing.parts.items():
        ids, labels = [], []
        for unit_id, unit_labels in entries:
            unit, got = listing.units[unit_id], scanned[unit_id]
            skipped += got["skipped"]
            for codec, n in got.get("codecs", {}).items():
                codecs[codec] = codecs.get(codec, 0) + n
            if listing.kind.pixels:
                records = [unit["paths"][i] for i in got["kept"]]
                kept_labels = (None if unit_labels is None
                               else [unit_labels[i] for i in got["kept"]])
            else:
                records = [(unit["path"], i) for i in range(got["docs"])]
                kept_labels = None if unit_labels is None else [unit_labels] * got["docs"]
            ids += range(len(refs), len(refs) + len(records))
            refs += records
            # a unit's digests arrive as one hex string (16 bytes a record): kept as
            # bytes, not 100-byte str objects, since the launcher holds one per record
            digests.append(np.frombuffer(bytes.fromhex(got["digests"]), np.uint8))
            if kept_labels is not None:
                labels += kept_labels
        xs[part] = np.asarray(ids, np.int64)
        ys[part] = np.asarray(labels, np.int64) if listing.class_names else None
    info = dict(listing.info)
    if listing.kind.strings:
        info["files_by_encoding"] = codecs
        if not len(xs["pool"]) and listing.writer["layout"] != "file":
            from pretrainer.data.textfiles import no_text_error

            raise no_text_error(Path(listing.writer["root"]), skipped)
    src = SourceData(x_pool=xs["pool"], y_pool=ys["pool"], class_names=listing.class_names,
                     x_test=xs.get("test"), y_test=ys.get("test"), x_val=xs.get("val"),
                     y_val=ys.get("val"), modality=listing.modality, info=info,
                     skipped=skipped)
    return Plan(src, refs, np.concatenate(digests or [np.zeros(0, np.uint8)]).reshape(-1, 16))


def shard_tasks(plan: Optional[Plan], arrays: dict, cfg, staging: str, modality: str,
                regression: bool, writer: dict, cuts: Optional[dict] = None):
    """One element per shard, named and cut exactly as `store.write_split` does (yielded:
    they are streamed to the pipeline's input file)."""
    from pretrainer.data.store import shard_bounds

    for split in splitting.SPLITS:
        x, y = arrays[split]
        bounds = shard_bounds(len(x), cfg.shard_size, cuts[split] if cuts else None)
        for s, (lo, hi) in enumerate(bounds):
            task = {"split": split, "file": f"{split}-{s:05d}-of-{len(bounds):05d}.tfrecord",
                    "staging": staging, "modality": modality, "regression": regression,
                    "labels": None if y is None else np.asarray(y[lo:hi]).tolist(), **writer}
            if plan is None:  # a table: the rows themselves travel
                task["rows"] = np.asarray(x[lo:hi], np.float32).tolist()
            else:
                task["refs"] = [plan.refs[i] for i in x[lo:hi]]
                task["digests"] = [d.hex() for d in plan.digest_bytes(x[lo:hi])]
            yield task


def pipeline_flags(collect_cfg) -> list[str]:
    """Beam pipeline options for collect.runner / collect.options / collect.workers."""
    flags = [str(o) for o in collect_cfg.options]
    if collect_cfg.runner == "beam":  # Beam's local runner, one process per worker
        workers = collect_cfg.workers or (len(os.sched_getaffinity(0))
                                          if hasattr(os, "sched_getaffinity") else 1)
        flags += ["--runner=DirectRunner", f"--direct_num_workers={workers}",
                  "--direct_running_mode=" + ("multi_processing" if workers > 1
                                              else "in_memory")]
    else:
        flags.append(f"--runner={collect_cfg.runner}")
    return flags


LOCAL_RUNNERS = ("beam", "DirectRunner", "PrismRunner")


def _from_json(line: str) -> dict:
    return json.loads(line)


def write_elements(elements, work: str, what: str) -> int:
    """Stream `elements` (dicts) to the JSON-lines file a pipeline reads; how many."""
    from pretrainer.data.store import _gfile, join

    n = 0
    with _gfile().GFile(join(work, f"{what}-elements.jsonl"), "w") as f:
        for element in elements:
            f.write(json.dumps(element) + "\n")
            n += 1
    return n


def _run(elements, fn, work: str, flags: list[str], what: str, args: tuple = (),
         parse: bool = True) -> list:
    """elements (an iterable of dicts) -> fn(element, *args) on Beam's workers -> their
    JSON lines, parsed (or, without `parse`, the paths of the files holding them).
    `elements` None: write_elements wrote them already.

    The elements are streamed to a JSON-lines file that the pipeline reads (Beam splits
    it between workers by byte ranges), not handed to beam.Create: Create would pickle
    them all into the launching process and the local runner would buffer them there."""
    import logging

    beam = require_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    from pretrainer.data.store import _gfile, join

    source, out_prefix = join(work, f"{what}-elements.jsonl"), join(work, f"{what}-results")
    if elements is not None:
        write_elements(elements, work, what)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    try:
        with beam.Pipeline(options=PipelineOptions(flags)) as p:
            _ = (p | f"read {what} elements" >> beam.io.ReadFromText(source)
                 | "parse" >> beam.Map(_from_json)
                 | what >> beam.Map(fn, *args)
                 | "results" >> beam.io.WriteToText(out_prefix, file_name_suffix=".jsonl"))
    except Exception as exc:  # a worker's error comes back wrapped in the runner's
        text = str(exc)
        inner = next((line.split("DataError: ", 1)[1] for line in text.splitlines()
                      if "DataError: " in line), None)
        if inner:
            raise DataError(inner) from exc
        raise DataError(f"the Beam pipeline ({what}) failed: "
                        f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"
                        ) from exc
    if not parse:
        return sorted(_gfile().glob(f"{out_prefix}*.jsonl"))
    results = []
    for path in sorted(_gfile().glob(f"{out_prefix}*.jsonl")):
        with _gfile().GFile(path, "r") as f:
            results += [json.loads(line) for line in f.read().splitlines() if line.strip()]
    return results


def collect(store: str, cfg, seed: int, say) -> "StoreManifest":  # noqa: F821
    """Build the store at `store` with a Beam pipeline; the manifest (see the module
    docstring). `cfg` is the whole Config (data + collect); `say` prints a line."""
    from pretrainer.data import sources
    from pretrainer.data.store import _gfile, join, plan_splits, publish, split_entry, staging_dir

    require_beam()
    data, gfile = cfg.data, _gfile()
    flags = pipeline_flags(cfg.collect)
    if cfg.collect.runner not in LOCAL_RUNNERS and "://" not in str(store):
        say(f"collect.runner={cfg.collect.runner}: the store {store} is a local path; the "
            f"runner's workers must see it (and data.path) at the same path")
    staging = staging_dir(store, data, seed)
    work = join(staging, "beam")
    if gfile.exists(work):
        gfile.rmtree(work)
    gfile.makedirs(work)
    t0 = time.perf_counter()
    plan, writer, shape = None, {}, None
    if data.source == "csv":  # one file: read here, only the shards written by Beam
        src = sources.load(data)
        arrays, contamination, cuts = plan_splits(src, data, seed)
    else:
        listing = list_images(data) if data.source == "image_folder" else list_texts(data)
        records = sum(len(u.get("paths", [])) or 1 for u in listing.units)
        say(f"  scan: {records} {'images' if listing.kind.pixels else 'files'} in "
            f"{len(listing.units)} elements ({' '.join(flags)})")
        scanned = {r["unit"]: r for r in _run(listing.units, scan_unit, work, flags, "scan")}
        plan = plan_from_scan(listing, scanned)
        del scanned  # the workers' lines: the plan holds what the rest needs
        src, writer = plan.src, listing.writer
        if listing.kind.pixels:
            size, mode = listing.writer["size"], listing.writer["mode"]
            shape = [size[0], size[1], 1 if mode == "L" else 3]
        arrays, contamination, cuts = plan_splits(
            src, data, seed, digests=plan.digest_bytes)
    tasks = shard_tasks(plan, arrays, data, staging, src.modality,
                        src.task == "regression", writer, cuts)
    say(f"  write: {sum(len(a[0]) for a in arrays.values())} examples into shards")
    written = _run(tasks, write_shard, work, flags, "write")
    gfile.rmtree(work)
    splits = {}
    for split in splitting.SPLITS:
        shards = sorted(({k: r[k] for k in ("file", "count", "sha256")}
                         for r in written if r["split"] == split), key=lambda r: r["file"])
        splits[split] = split_entry(split, arrays[split][1], shards, src.class_names,
                                    src.task == "regression")
    say(f"  beam: {time.perf_counter() - t0:.1f} s")
    return publish(store, staging, data, seed, src, arrays, splits, contamination, shape)
