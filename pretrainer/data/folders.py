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

from pathlib import Path
from typing import Optional

import numpy as np

from pretrainer.errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}
DEFAULT_SIZE = (64, 64)


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def detect_layout(root: Path) -> str:
    """'splits', 'classes' or 'flat' (see the module docstring)."""
    subdirs = {d.name.lower(): d for d in _class_dirs(root)}
    if "train" in subdirs and "test" in subdirs and _class_dirs(subdirs["train"]):
        return "splits"
    if any(_images_under(d) for d in _class_dirs(root)) and not any(
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


def load_images(files: list[Path], size: tuple[int, int], mode: str, root: Path
                ) -> tuple[np.ndarray, list[int], list[dict]]:
    """Decode, convert and resize; return (images, indices kept, skipped [{file, reason}])."""
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
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            skipped.append({"file": str(path.relative_to(root)), "reason": reason})
            continue
        out[len(kept)] = arr.reshape(h, w, channels)
        kept.append(i)
    return out[:len(kept)], kept, skipped


def _labeled(folder: Path, classes: list[str], size, mode, root) -> tuple:
    files, labels = [], []
    for c, name in enumerate(classes):
        d = folder / name
        if d.is_dir():
            found = _images_under(d)
            files += found
            labels += [c] * len(found)
    x, kept, skipped = load_images(files, size, mode, root)
    return x, np.asarray(labels, dtype=np.int64)[kept], skipped


def load_folder(root_path: Optional[str], image_size, color: str):
    """Return the pieces of a SourceData for an image folder (see sources.load_image_folder)."""
    if not root_path:
        raise DataError("data.source=image_folder needs data.path=DIR (a folder of images)")
    root = Path(root_path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path={root_path} is not a folder")
    size = tuple(image_size) if image_size else DEFAULT_SIZE
    layout = detect_layout(root)
    all_files = _images_under(root)
    if not all_files:
        raise DataError(f"No images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}")
    mode = _choose_mode(all_files, color)
    result = {"layout": layout, "mode": mode, "size": size}
    if layout == "flat":
        x, _, skipped = load_images(all_files, size, mode, root)
        result.update(x_pool=x, y_pool=None, class_names=[], skipped=skipped)
        return result
    top = root / next(d.name for d in _class_dirs(root) if d.name.lower() == "train") \
        if layout == "splits" else root
    classes = [d.name for d in _class_dirs(top) if _images_under(d)]
    empty = [d.name for d in _class_dirs(top) if not _images_under(d)]
    if len(classes) < 2:
        raise DataError(f"Found {len(classes)} class folder(s) with images under {top}; "
                        f"need at least 2 (or a flat folder for unlabeled data)")
    x, y, skipped = _labeled(top, classes, size, mode, root)
    result.update(x_pool=x, y_pool=y, class_names=classes, skipped=skipped,
                  empty_classes=empty)
    if layout == "splits":
        subdirs = {d.name.lower(): d for d in _class_dirs(root)}
        for split in ("test", "val"):
            if split in subdirs:
                xs, ys, sk = _labeled(subdirs[split], classes, size, mode, root)
                result[f"x_{split}"], result[f"y_{split}"] = xs, ys
                skipped += sk
    return result


def load_unlabeled_folder(path: str, shape: tuple[int, ...]) -> tuple[np.ndarray, list[dict]]:
    """Extra unlabeled images, decoded to the main source's (H, W, C)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.extra_unlabeled={path} is not a folder")
    files = _images_under(root)
    if not files:
        raise DataError(f"No images under data.extra_unlabeled={path}")
    x, _, skipped = load_images(files, shape[:2], "L" if shape[2] == 1 else "RGB", root)
    return x, skipped
