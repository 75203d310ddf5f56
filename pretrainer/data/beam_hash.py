"""collect on Apache Beam with `data.split_rule=hash`: the launcher's memory does not grow
with the records (the stratified rule's plan holds ~0.4 KiB per record: beam.py).

1. list (here, streamed): image folders are walked one class folder at a time and each
   chunk of 256 paths goes straight to the scan's input file; nothing is sorted, since
   no record's place depends on the listing order (text: one element per file);
2. scan (Beam): each element decoded on a worker, which sends back its records'
   references, labels and 16-byte content digests;
3. plan (here): `hashsplit.Planner`'s passes stream over the scan's result files, holding
   per-class aggregates and the test split's digests (16 bytes per test record, for the
   contamination check); the last pass appends each kept record's line to the file of
   its (split, shard) bucket, through a bounded buffer;
4. write (Beam): one element per shard; a worker reads its bucket, sorts it by u(order),
   decodes the records again (each checked against its scan digest) and writes the shard;
5. publish (here): the manifest and the folder renamed into place, as in-process.

Beam's own GroupByKey would do step 3's bucketing, but Beam's local runner buffers a
shuffle in the launching process: files keep it out of memory on every runner.
The in-process path (`hashsplit.plan_arrays`) runs the same planner over whole arrays, so
the two stores are identical, file for file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pretrainer.data import beam as common
from pretrainer.data import hashsplit
from pretrainer.data.splits import SPLITS
from pretrainer.errors import DataError

CHUNK_RECORDS = 16384  # records per planner call: numpy's per-call cost amortised
BUFFERED_LINES = 50_000  # bucket lines held (~12 MiB) before they go to their files


# --------------------------------------------------------------- what workers run

def scan_records(unit: dict, job: dict) -> str:
    """One element -> a JSON line: its records' references, label, digests, skips (the
    decoding is beam.scanned's; an extra folder's element carries its own root)."""
    got = common.scanned({**job, "kind": job["modality"], **unit})
    if "kept" in got:
        refs = [unit["paths"][i] for i in got.pop("kept")]
    else:
        refs = [[unit["path"], i] for i in range(got.pop("docs"))]
    if unit["part"] == "extra":  # as sources.load marks them
        got["skipped"] = [{**s, "folder": "extra_unlabeled"} for s in got["skipped"]]
    return json.dumps({"unit": unit["unit"], "part": unit["part"], "label": unit["label"],
                       "refs": refs, **got})


def write_bucket(element: dict, job: dict) -> str:
    """One shard's bucket -> its records in u(order), decoded again and written."""
    from pretrainer.data.store import _gfile

    lines = []
    for piece in element["pieces"]:
        with _gfile().GFile(piece, "r") as f:
            lines += [json.loads(line) for line in f.read().splitlines() if line]
    lines.sort(key=lambda r: (r[3], -1 if r[2] is None else r[2]))
    task = {**job, "split": element["split"], "file": element["file"],
            "refs": [r[0] for r in lines], "digests": [r[1] for r in lines],
            "labels": None if element["split"] == "unlabeled" else [r[2] for r in lines]}
    return common.write_shard(task)


# --------------------------------------------------------------- the launching side

def _image_units(cfg, out: list):
    """Yield scan elements while walking the folder; fills `out` with (class_names,
    empty classes, layout, root, sample) once the walk ends (see folders.list_folder:
    the same layouts, the same class numbering)."""
    from pretrainer.data import folders

    root = folders.image_root(cfg.path)
    layout = folders.detect_layout(root)
    sample, n = folders.ModeSample(root), [0]

    def chunks(paths, part, label, **more):
        buf = []
        for p in paths:
            if part == "pool":
                sample.add(p)
            buf.append(p)
            if len(buf) == common.SCAN_CHUNK:
                yield {"unit": n[0], "part": part, "label": label, "paths": buf, **more}
                n[0], buf = n[0] + 1, []
        if buf:
            yield {"unit": n[0], "part": part, "label": label, "paths": buf, **more}
            n[0] += 1

    classes, empty = [], []
    if layout == "flat":
        yield from chunks(folders.iter_images(root), "pool", None)
        if not n[0]:
            raise DataError(f"No images ({', '.join(sorted(folders.IMAGE_EXTENSIONS))}) "
                            f"under {root}")
    else:
        subdirs = {d.name.lower(): d for d in folders._class_dirs(root)}
        top = subdirs["train"] if layout == "splits" else root
        for d in folders._class_dirs(top):
            before = n[0]
            yield from chunks(folders.iter_images(d), "pool", len(classes))
            (classes if n[0] > before else empty).append(d.name)
        if len(classes) < 2:
            raise folders.too_few_classes(classes, top)
        for part in ("test", "val") if layout == "splits" else ():
            for c, name in enumerate(classes):
                if part in subdirs and (subdirs[part] / name).is_dir():
                    yield from chunks(folders.iter_images(subdirs[part] / name), part, c)
    if cfg.extra_unlabeled:  # images for the unlabeled split only (sources.load)
        extra = Path(cfg.extra_unlabeled).expanduser()
        if not extra.is_dir():
            raise DataError(f"data.extra_unlabeled={cfg.extra_unlabeled} is not a folder")
        before = n[0]
        yield from chunks(folders.iter_images(extra), "extra", None, root=str(extra))
        if n[0] == before:
            raise DataError(f"No images under data.extra_unlabeled={cfg.extra_unlabeled}")
    out.append((classes, empty, layout, root, sample))


def _text_units(cfg, out: list):
    from pretrainer.data.textfiles import list_text_files

    listing = list_text_files(cfg.path)
    for i, (f, c) in enumerate(listing["files"]):
        yield {"unit": i, "part": "pool", "label": c, "path": str(f)}
    out.append(listing)


def _records(paths: list[str]):
    """The scan's result lines, streamed, batched into chunks of one part:
    (part, digests [n, 16], strata or None, refs)."""
    batch: list[dict] = []

    def flush():
        refs = [r for line in batch for r in line["refs"]]
        digests = np.frombuffer(bytes.fromhex("".join(line["digests"] for line in batch)),
                                np.uint8).reshape(-1, 16)
        labels = [line["label"] for line in batch for _ in line["refs"]]
        strata = None if batch[0]["label"] is None else np.asarray(labels, np.int64)
        return batch[0]["part"], digests, strata, refs

    size = 0
    for line in _lines(paths):
        if batch and (line["part"] != batch[0]["part"] or size >= CHUNK_RECORDS):
            yield flush()
            batch, size = [], 0
        batch.append(line)
        size += len(line["refs"])
    if batch:
        yield flush()


class Buckets:
    """Lines appended to one file per (split, shard) through a buffer of at most
    BUFFERED_LINES lines. A local folder's bucket files are appended to; on an object
    store (which cannot append) each flush writes one piece file per bucket. The pieces
    of each bucket are listed for the write elements."""

    def __init__(self, folder: str):
        from pretrainer.data.store import _gfile, _remote

        self.folder, self.gfile, self.local = folder, _gfile(), not _remote(folder)
        self.gfile.makedirs(folder)
        self.buffer: dict = {}
        self.pieces: dict = {}
        self.held = 0

    def add(self, split: str, shard: int, line: str) -> None:
        self.buffer.setdefault((split, shard), []).append(line)
        self.held += 1
        if self.held >= BUFFERED_LINES:
            self.flush()

    def flush(self) -> None:
        from pretrainer.data.store import join

        for (split, shard), lines in self.buffer.items():
            pieces = self.pieces.setdefault((split, shard), [])
            text = "\n".join(lines) + "\n"
            if self.local:
                if not pieces:
                    pieces.append(join(self.folder, f"{split}-{shard:05d}.jsonl"))
                with open(pieces[0], "a", encoding="utf-8") as f:
                    f.write(text)
                continue
            pieces.append(join(self.folder, f"{split}-{shard:05d}-{len(pieces):05d}.jsonl"))
            with self.gfile.GFile(pieces[-1], "w") as f:
                f.write(text)
        self.buffer, self.held = {}, 0


def collect(store: str, cfg, seed: int, say):
    """Build the store at `store` under data.split_rule=hash with Beam (module docstring)."""
    from pretrainer.data.folders import DEFAULT_SIZE, _choose_mode
    from pretrainer.data.store import _gfile, join, staging_dir

    data, gfile = cfg.data, _gfile()
    flags = common.pipeline_flags(cfg.collect)
    staging = staging_dir(store, data, seed)
    work = join(staging, "beam")
    if gfile.exists(work):
        gfile.rmtree(work)
    gfile.makedirs(work)
    images, listed = data.source == "image_folder", []
    units = _image_units(data, listed) if images else _text_units(data, listed)
    n_units = common.write_elements(units, work, "scan")  # the walk ends here
    if images:
        classes, empty, layout, root, sample = listed[0]
        size = tuple(data.image_size) if data.image_size else DEFAULT_SIZE
        mode = _choose_mode(sample.files(), data.color)
        job = {"modality": "image", "root": str(root), "size": list(size), "mode": mode,
               "extra": data.extra_unlabeled}
        info = {"path": str(data.path), "layout": layout,
                "color": "grayscale" if mode == "L" else "rgb", "image_size": list(size),
                "empty_class_folders": empty}
        shape = [size[0], size[1], 1 if mode == "L" else 3]
    else:
        listing = listed[0]
        classes, root, shape = listing["class_names"], listing["root"], None
        job = {"modality": "text", "root": str(root), "how": data.text_split,
               "encoding": data.encoding}
        info = {"path": str(data.path), "layout": listing["layout"],
                "text_split": data.text_split}
    say(f"  scan: {n_units} elements ({' '.join(flags)})")
    results = common._run(None, scan_records, work, flags, "scan", args=(job,), parse=False)
    src = _source(results, job, classes, info)
    planner = hashsplit.Planner(data, seed, len(classes), has_test=src.x_test is not None,
                                has_val=src.x_val is not None, labeled=bool(classes))
    contamination = _plan(planner, results)
    buckets = Buckets(join(work, "buckets"))
    for part, digests, strata, refs in _records(results):
        masks = planner.assign(part, digests, strata)
        for split in SPLITS:
            keep, shard, u = planner.place(split, masks, digests)
            for j, sh, uj in zip(np.flatnonzero(keep).tolist(), shard.tolist(), u.tolist(),
                                 strict=True):
                buckets.add(split, sh, json.dumps(
                    [refs[j], digests[j].tobytes().hex(),
                     None if strata is None else int(strata[j]), uj]))
    buckets.flush()
    elements = ({"split": split, "file": f"{split}-{s:05d}-of-{n:05d}.tfrecord",
                 "pieces": buckets.pieces.get((split, s), [])}
                for split, n in planner.shards.items() for s in range(n))
    say(f"  write: {sum(planner.counts.values())} examples into "
        f"{sum(planner.shards.values())} shards")
    written = common._run(elements, write_bucket, work, flags, "write",
                          args=({**job, "staging": staging, "regression": False},))
    gfile.rmtree(work)
    splits = {}
    for split in SPLITS:
        shards = sorted(({k: r[k] for k in ("file", "count", "sha256")}
                         for r in written if r["split"] == split), key=lambda r: r["file"])
        per_class = ({} if split == "unlabeled" or not classes else
                     {classes[c]: int(n) for c, n in enumerate(planner.per_class[split]) if n})
        splits[split] = {"count": sum(r["count"] for r in shards), "labeled": split != "unlabeled",
                         "per_class": per_class, "shards": shards}
    from pretrainer.data.store import publish

    return publish(store, staging, data, seed, src, {}, splits, contamination, shape)


def _lines(paths: list[str]):
    from pretrainer.data.store import _gfile

    for path in paths:
        with _gfile().GFile(path, "r") as f:
            for text in f:
                yield json.loads(text)


def _source(results: list[str], job: dict, classes: list, info: dict):
    """What the manifest says of the source (a SourceData without the records), from one
    light pass over the scan's results: the skips in the in-process path's order, the text
    codecs, which of the source's own splits have records; the in-process path's errors
    for a source without readable records."""
    from pretrainer.data.sources import SourceData

    skipped, codecs, counts = [], {}, dict.fromkeys(hashsplit.PARTS, 0)
    for line in _lines(results):
        counts[line["part"]] += len(line["refs"])
        skipped += [(hashsplit.PARTS.index(line["part"]), line["unit"], s)
                    for s in line["skipped"]]
        if "codecs" in line:
            codecs[line["unit"]] = line["codecs"]
    if job["modality"] == "image":  # in-process decodes each part in sorted path order
        skipped.sort(key=lambda s: (s[0], s[2]["file"].split("/")))
    else:  # in-process reads the files in listing order
        skipped.sort(key=lambda s: (s[1], s[0]))
    skipped = [s for _, _, s in skipped]
    if job["modality"] == "text":
        merged: dict = {}
        for unit in sorted(codecs):
            for codec, n in codecs[unit].items():
                merged[codec] = merged.get(codec, 0) + n
        info["files_by_encoding"] = merged
        if not counts["pool"] and info["layout"] != "file":
            from pretrainer.data.textfiles import no_text_error

            raise no_text_error(Path(job["root"]), skipped)
    if counts["extra"]:
        info["extra_unlabeled"] = {"path": job["extra"], "count": counts["extra"]}
    if not counts["pool"]:
        shown = "; ".join(f"{s['file']} ({s['reason']})" for s in skipped[:3])
        raise DataError("The source gave no readable examples"
                        + (f": all {len(skipped)} file(s) were skipped, e.g. {shown}"
                           if skipped else ""))
    none = np.zeros(0, np.int64)
    return SourceData(x_pool=none, y_pool=none if classes else None, class_names=classes,
                      x_test=none if counts["test"] else None,
                      x_val=none if counts["val"] else None, modality=job["modality"],
                      info=info, skipped=skipped)


def _plan(planner: hashsplit.Planner, results: list[str]) -> dict:
    """The planner's passes up to the shard counts; the contamination report."""
    if planner.needs_cap:
        for part, digests, _, _ in _records(results):
            planner.cap(part, digests)
    for part, digests, strata, _ in _records(results):
        planner.observe(part, digests, strata)
    planner.resolve()
    for part, digests, strata, _ in _records(results):
        planner.tally(planner.assign(part, digests, strata), strata)
    return planner.finish_tally()
