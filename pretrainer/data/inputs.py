"""User inputs for `predict` and `embed`: an image folder, a text file, or a CSV,
read in bounded batches and preprocessed as `collect` preprocessed the training data.

- a folder: every image under it (jpg, jpeg, png, bmp, gif; hidden files skipped),
  decoded with Pillow and resized to the training size, as `collect` does;
- a `.csv` file: rows with the training CSV's columns by name (others ignored),
  encoded by the store's recorded column encodings;
- any other file: text, one example per line (empty lines skipped), in UTF-8 or,
  failing that, cp1252/latin-1 (`decode` as for the training text).

Unreadable images and rows that do not parse are skipped and reported, never fatal.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from pretrainer.data.modalities import BY_INPUT_KIND
from pretrainer.data.records import StoreManifest
from pretrainer.errors import DataError


@dataclass
class Batch:
    ids: list[str]  # what each example is: a relative path, "line N", "row N"
    x: np.ndarray  # model input: float32 images in [0, 1], strings, or encoded rows
    skipped: list[dict] = field(default_factory=list)  # {"input", "reason"}


def kind_of(path: Path) -> str:
    if path.is_dir():
        return "folder"
    if not path.is_file():
        raise DataError(f"{path} is neither a folder of images nor a file")
    return "csv" if path.suffix.lower() == ".csv" else "text"


def check_modality(path: Path, manifest: StoreManifest) -> str:
    kind = kind_of(path)
    want = manifest.kind
    if kind != want.input_kind:
        raise DataError(f"this model takes {want.name} inputs: pass {want.user_input} (got "
                        f"{path}, read as {BY_INPUT_KIND[kind].name})")
    return kind


def count(path: Path) -> int | None:
    """How many examples `batches` will try (images or lines), for a progress bar."""
    kind = kind_of(path)
    if kind == "folder":
        from pretrainer.data.folders import _images_under

        return len(_images_under(path))
    with open(path, "rb") as f:
        n = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return max(n - (kind == "csv"), 0) or None


def batches(path: Path, manifest: StoreManifest, batch_size: int = 256) -> Iterator[Batch]:
    kind = check_modality(path, manifest)
    if kind == "folder":
        yield from _image_batches(path, manifest, batch_size)
    elif kind == "csv":
        yield from _csv_batches(path, manifest, batch_size)
    else:
        yield from _text_batches(path, batch_size)


def _image_batches(root: Path, manifest: StoreManifest, batch_size: int) -> Iterator[Batch]:
    from pretrainer.data.folders import _images_under, load_images
    from pretrainer.data.modalities.image import scale_pixels

    h, w, c = manifest.shape
    files = _images_under(root)
    if not files:
        raise DataError(f"no images (jpg, jpeg, png, bmp, gif) under {root}")
    for i in range(0, len(files), batch_size):
        chunk = files[i:i + batch_size]
        x, kept, skipped = load_images(chunk, (h, w), "L" if c == 1 else "RGB", root)
        yield Batch([str(chunk[k].relative_to(root)) for k in kept], scale_pixels(x),
                    [{"input": s["file"], "reason": s["reason"]} for s in skipped])


def _codec(path: Path) -> str:
    """The text's codec, judged on its first MiB cut at a line end (see textfiles.decode)."""
    from pretrainer.data.textfiles import BOMS, decode

    with open(path, "rb") as f:
        head = f.read(1 << 20)
    for bom, codec in BOMS:  # before any cut: a UTF-16 text cut mid-character fails
        if head.startswith(bom):
            return codec.removesuffix("-sig")
    if len(head) == 1 << 20 and b"\n" in head:
        head = head[:head.rindex(b"\n")]
    return decode(head, "auto")[1]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    codec = _codec(path)
    if codec in ("utf-16", "utf-32"):  # newlines are several bytes: decode as a stream
        with open(path, encoding=codec, errors="replace", newline=None) as f:
            for n, line in enumerate(f, 1):
                yield n, line.rstrip("\r\n")
        return
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode(codec)
            except UnicodeDecodeError:  # a stray line in another codec
                line = raw.decode("latin-1")
            line = line.rstrip("\r\n").lstrip("\ufeff") if n == 1 else line.rstrip("\r\n")
            yield n, line


def _text_batches(path: Path, batch_size: int) -> Iterator[Batch]:
    ids, texts = [], []
    for n, line in _lines(path):
        if not line.strip():
            continue
        ids.append(f"line {n}")
        texts.append(line)
        if len(texts) == batch_size:
            yield Batch(ids, np.array(texts, dtype=object))
            ids, texts = [], []
    if texts:
        yield Batch(ids, np.array(texts, dtype=object))


def _csv_batches(path: Path, manifest: StoreManifest, batch_size: int) -> Iterator[Batch]:
    from pretrainer.data.modalities.tabular import encode_row

    columns = list(manifest.columns)
    if not columns:
        raise DataError("this model's store has no recorded CSV columns (collected by an "
                        "older pretrainer): collect again to predict from a CSV")
    lines = (line for _, line in _lines(path))
    reader = csv.reader(lines)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError(f"{path} is empty") from None
    except csv.Error as exc:
        raise DataError(f"{path} is not a readable CSV: {exc}") from exc
    missing = [c["column"] for c in columns if c["column"] not in header]
    if missing:
        raise DataError(f"{path.name} lacks the column(s) {', '.join(missing)} the model was "
                        f"trained on. Its columns: {', '.join(header)}")
    ids, rows, skipped = [], [], []
    n = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            skipped.append({"input": f"row {n + 1}", "reason": str(exc)})
            n += 1
            continue
        n += 1
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            skipped.append({"input": f"row {n}", "reason": f"{len(cells)} cells, header has "
                                                          f"{len(header)}"})
            continue
        try:
            rows.append(encode_row(columns, dict(zip(header, cells, strict=True))))
        except ValueError as exc:
            skipped.append({"input": f"row {n}", "reason": str(exc)[:200]})
            continue
        ids.append(f"row {n}")
        if len(rows) == batch_size:
            yield Batch(ids, np.stack(rows), skipped)
            ids, rows, skipped = [], [], []
    if rows or skipped:
        yield Batch(ids, np.stack(rows) if rows else np.zeros((0, manifest.width),

                                                              np.float32), skipped)
