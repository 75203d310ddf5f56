"""Image folders as a data source (`data.source=image_folder data.path=DIR`).

Layouts understood, in this order:

- `root/{train,test[,val]}/<class>/*`: the common published layout; those
  folders become the splits.
- `root/<class>/*`: labeled by folder name; test and val are held out.
- any other folder (flat or nested, no class folders): unlabeled images only,
  for pretraining.

Images (jpg, jpeg, png, bmp, gif) are decoded with Pillow, converted to RGB or
grayscale and resized to `data.image_size`. A file that cannot be decoded is
skipped, counted and listed with its reason; it never stops the collect.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from pretrainer.errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}
DEFAULT_SIZE = (64, 64)


def iter_images(folder) -> Iterator[str]:
    """Image files under `folder` (hidden files and folders skipped), as found: a generator,
    so a listing of millions of files need not be held (collect on Beam with
    data.split_rule=hash). os.scandir, not Path.rglob + is_file: 70k files listed in a
    fraction of the 3 s. Symlinked folders are followed once each: a link back into the
    tree (a loop) and folders that cannot be listed are passed over, not an error."""
    top = os.stat(folder)
    stack, seen = [str(folder)], {(top.st_dev, top.st_ino)}
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:  # permission denied, a folder gone meanwhile
            continue
        with it:  # read as it goes: a folder of a million files is not held
            for entry in it:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir():
                        st = entry.stat()  # the target's identity, through a symlink
                        if (st.st_dev, st.st_ino) not in seen:
                            seen.add((st.st_dev, st.st_ino))
                            stack.append(entry.path)
                    elif (os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
                          and entry.is_file()):
                        yield entry.path
                except OSError:  # a symlink to itself, a dangling one
                    continue


def _images_under(folder: Path) -> list[Path]:
    """iter_images, sorted by path parts."""
    return [Path(f) for f in sorted(iter_images(folder), key=lambda f: f.split(os.sep))]


def _has_images(folder: Path) -> bool:
    return next(iter(iter_images(folder)), None) is not None


class ModeSample:
    """The files `color=auto` looks at under data.split_rule=hash: the 50 whose relative
    paths hash smallest, kept while the listing streams (the stratified rule's sample,
    50 spread over the sorted listing, needs the whole listing)."""

    def __init__(self, root, size: int = 50):
        self.prefix, self.size, self.heap = len(str(root)) + 1, size, []

    def add(self, path: str) -> None:
        import hashlib
        import heapq

        rel = path[self.prefix:].encode("utf-8", "surrogateescape")
        h = -int.from_bytes(hashlib.blake2b(rel, digest_size=8).digest(), "big")
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, (h, path))
        elif h > self.heap[0][0]:
            heapq.heapreplace(self.heap, (h, path))

    def files(self) -> list[Path]:
        return [Path(p) for _, p in sorted(self.heap, reverse=True)]


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def detect_layout(root: Path) -> str:
    """'splits', 'classes' or 'flat' (see the module docstring)."""
    subdirs = {d.name.lower(): d for d in _class_dirs(root)}
    if "train" in subdirs and "test" in subdirs and _class_dirs(subdirs["train"]):
        return "splits"
    if any(_has_images(d) for d in _class_dirs(root)) and not any(
            p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in root.iterdir()):
        return "classes"
    return "flat"


def _choose_mode(files: list[Path], color: str) -> str:
    """'RGB' or 'L'. auto: grayscale only when every sampled image is grayscale."""
    if color == "rgb":
        return "RGB"
    if color == "grayscale":
        return "L"
    from PIL import Image

    modes = set()
    for path in files[:: max(1, len(files) // 50)][:50]:
        try:
            with Image.open(path) as im:
                modes.add(im.mode)
        except Exception:  # unreadable files are reported when decoded
            continue
    return "L" if modes and modes <= {"L", "1", "I;16", "I"} else "RGB"


# Decoding is per-file Python + Pillow work; above this many files it is spread over
# worker processes. Threads were measured slower (20k 28x28 PNGs: 2.4 s on one thread,
# 4.6 s on two: Pillow's small-image path holds the GIL).
PARALLEL_MIN_FILES = 4000
CHUNK = 512


def _workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, cpus or 1)


def _pool(workers: int, n_files: int):
    """A fork pool, or None (decode here). Fork, not spawn: spawn re-imports the user's
    __main__, which breaks scripts without an `if __name__ == "__main__"` guard. Only while
    TensorFlow is not loaded: its threads do not survive a fork."""
    import multiprocessing
    import sys
    from concurrent.futures import ProcessPoolExecutor

    if (workers < 2 or n_files < PARALLEL_MIN_FILES or "tensorflow" in sys.modules
            or "fork" not in multiprocessing.get_all_start_methods()):
        return None
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))


def load_images(files: list[Path], size: tuple[int, int], mode: str, root: Path,
                label: str = "", workers: Optional[int] = None
                ) -> tuple[np.ndarray, list[int], list[dict]]:
    """Decode, convert and resize; return (images, indices kept, skipped [{file, reason}]).

    With `label`, shows progress (a bar on a terminal, a line now and then in logs) and
    ends with one line of count, time and rate. Large lists decode in `workers`
    processes (default: the CPUs this process may use, at most 8), in file order.
    """
    from pretrainer.console import progress

    h, w = size
    channels = 1 if mode == "L" else 3
    out = np.empty((len(files), h, w, channels), dtype=np.uint8)
    kept, skipped = [], []
    chunks = [files[i:i + CHUNK] for i in range(0, len(files), CHUNK)]
    args = (chunks, [size] * len(chunks), [mode] * len(chunks), [str(root)] * len(chunks))
    pool = _pool(_workers() if workers is None else workers, len(files))  # before any thread
    with contextlib.ExitStack() as stack:
        if pool is not None:
            stack.enter_context(pool)
        advance = stack.enter_context(progress(label or None, len(files), "images"))
        results = pool.map(_decode_chunk, *args) if pool is not None else map(
            _decode_chunk, *args)
        for start, (arr, k, sk) in zip(range(0, len(files), CHUNK), results, strict=True):
            out[len(kept):len(kept) + len(k)] = arr
            kept += [start + i for i in k]
            skipped += sk
            advance(len(k) + len(sk))
    return out[:len(kept)], kept, skipped


def _decode_chunk(files: list[Path], size: tuple[int, int], mode: str, root: str
                  ) -> tuple[np.ndarray, list[int], list[dict]]:
    from PIL import Image, UnidentifiedImageError

    h, w = size
    channels = 1 if mode == "L" else 3
    out = np.empty((len(files), h, w, channels), dtype=np.uint8)
    kept, skipped = [], []
    for i, path in enumerate(files):
        try:
            with Image.open(path) as im:
                im.load()  # a truncated file fails here, not later
                im = im.convert(mode)
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except Image.DecompressionBombError:  # a small file that decodes to gigabytes
            skipped.append({"file": str(Path(path).relative_to(root)),
                            "reason": f"more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels "
                                      f"(Pillow's decompression-bomb limit)"})
            continue
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            skipped.append({"file": str(Path(path).relative_to(root)), "reason": reason})
            continue
        out[len(kept)] = arr.reshape(h, w, channels)
        kept.append(i)
    return out[:len(kept)], kept, skipped


def _labeled_files(folder: Path, classes: list[str], listed: Optional[dict] = None
                   ) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for c, name in enumerate(classes):
        d = folder / name
        if d.is_dir():
            found = listed[name] if listed is not None else _images_under(d)
            files += found
            labels += [c] * len(found)
    return files, labels


def image_root(root_path: Optional[str]) -> Path:
    """data.path as a folder, or the one-line error (both collect paths list from here)."""
    if not root_path:
        raise DataError("data.source=image_folder needs data.path=DIR (a folder of images)")
    root = Path(root_path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path={root_path} is not a folder")
    return root


def too_few_classes(classes: list, top: Path) -> DataError:
    return DataError(f"Found {len(classes)} class folder(s) with images under {top}; "
                     f"need at least 2 (or a flat folder for unlabeled data)")


def _sampled(files: list[Path], root: Path, hash_sample: bool) -> list[Path]:
    if not hash_sample:
        return files
    sample = ModeSample(root)
    for f in files:
        sample.add(str(f))
    return sample.files()


def list_folder(root_path: Optional[str], image_size, color: str,
                hash_sample: bool = False) -> dict:
    """What an image folder holds, before anything is decoded: {root, layout, mode, size,
    class_names, empty_classes, parts}; parts maps pool (and test, val for the
    train/test[/val] layout) to (files, labels or None, progress label), in the order
    their images are decoded and numbered. collect's in-process and Beam paths both
    start here, so they number the same files the same way."""
    root = image_root(root_path)
    size = tuple(image_size) if image_size else DEFAULT_SIZE
    layout = detect_layout(root)
    result = {"root": root, "layout": layout, "size": size, "class_names": [],
              "empty_classes": []}
    if layout == "flat":
        files = _images_under(root)
        if not files:
            raise DataError(f"No images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}")
        result.update(mode=_choose_mode(_sampled(files, root, hash_sample), color),
                      parts={"pool": (files, None, "decode")})
        return result
    top = root / next(d.name for d in _class_dirs(root) if d.name.lower() == "train") \
        if layout == "splits" else root
    # each folder listed once: the listing of 10M paths is the launcher's largest object
    listed = {d.name: _images_under(d) for d in _class_dirs(top)}
    classes = [name for name, found in listed.items() if found]
    if len(classes) < 2:
        raise too_few_classes(classes, top)
    result.update(class_names=classes,
                  empty_classes=[name for name, found in listed.items() if not found])
    parts = {"pool": (*_labeled_files(top, classes, listed),
                      f"decode {top.name}" if layout == "splits" else "decode")}
    result["mode"] = _choose_mode(_sampled(parts["pool"][0], root, hash_sample), color)
    if layout == "splits":
        subdirs = {d.name.lower(): d for d in _class_dirs(root)}
        for split in ("test", "val"):
            if split in subdirs:
                parts[split] = (*_labeled_files(subdirs[split], classes),
                                f"decode {subdirs[split].name}")
    result["parts"] = parts
    return result


def load_folder(root_path: Optional[str], image_size, color: str, hash_sample: bool = False):
    """Return the pieces of a SourceData for an image folder (see sources.load_image_folder;
    `hash_sample`: see ModeSample)."""
    listing = list_folder(root_path, image_size, color, hash_sample)
    root, size, mode = listing["root"], listing["size"], listing["mode"]
    result = {k: listing[k] for k in ("layout", "mode", "size", "class_names")}
    result["empty_classes"] = listing["empty_classes"]
    skipped = []
    for part, (files, labels, label) in listing["parts"].items():
        x, kept, sk = load_images(files, size, mode, root, label=label)
        skipped += sk
        name = "pool" if part == "pool" else part
        result[f"x_{name}"] = x
        result[f"y_{name}"] = None if labels is None else np.asarray(labels, np.int64)[kept]
    result["skipped"] = skipped
    return result


def load_unlabeled_folder(path: str, shape: tuple[int, ...]) -> tuple[np.ndarray, list[dict]]:
    """Extra unlabeled images, decoded to the main source's (H, W, C)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.extra_unlabeled={path} is not a folder")
    files = _images_under(root)
    if not files:
        raise DataError(f"No images under data.extra_unlabeled={path}")
    x, _, skipped = load_images(files, shape[:2], "L" if shape[2] == 1 else "RGB", root,
                                label="decode extra_unlabeled")
    return x, skipped
