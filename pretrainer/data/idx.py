"""IDX files (the MNIST family's format): a folder of train/t10k image and label files.

Written here because no installed library reads IDX without downloading
(keras.datasets fetches from fixed URLs; tensorflow-datasets is not a dependency).
Format: 2 zero bytes, a type code (0x08 = uint8), the number of dimensions, one
big-endian uint32 per dimension, then the data. Files may be gzip-compressed.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional

import numpy as np

from pretrainer.errors import DataError

# (images, labels) stems for each split, in the layout MNIST, Fashion-MNIST and KMNIST use
STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path) -> np.ndarray:
    """One IDX file as a uint8 array; a one-line DataError when it is not valid IDX."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"Could not read {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of uint8 values (bad header)")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(data[4:header], ">u4"))
    if len(data) - header != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims} "
                        f"({int(np.prod(dims))} bytes), file holds {len(data) - header}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """`array` as an IDX file of uint8 values (read_idx's inverse; gzip and a .gz suffix
    when `compress`), for tests and benchmarks that make MNIST-layout folders."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = (bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
            + array.tobytes())
    if compress:
        path, data = path.with_name(path.name + ".gz"), gzip.compress(data)
    path.write_bytes(data)
    return path


def _find(folder: Path, stem: str) -> Optional[Path]:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                 stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_idx_folder(folder: str | Path) -> dict:
    """{split: (images NHWC uint8, labels int64)} for the splits present (train required)."""
    folder = Path(folder)
    if not folder.is_dir():
        hint = (" (Debian/Ubuntu: apt-get install dataset-fashion-mnist)"
                if "fashion-mnist" in str(folder) else "")
        raise DataError(f"data.path={folder} is not a folder of IDX files{hint}. "
                        f"Set data.path=<folder with train-images-idx3-ubyte[.gz]>")
    out = {}
    for split, (img_stem, lab_stem) in STEMS.items():
        img, lab = _find(folder, img_stem), _find(folder, lab_stem)
        if img is None and lab is None:
            continue
        if img is None or lab is None:
            raise DataError(f"{folder} has {(img or lab).name} but not its "
                            f"{'labels' if lab is None else 'images'} file ({lab_stem if lab is None else img_stem}[.gz])")
        x, y = read_idx(img), read_idx(lab).reshape(-1).astype(np.int64)
        if x.ndim != 3 or len(x) != len(y):
            raise DataError(f"{img.name} holds {x.shape}, {lab.name} {len(y)} labels: "
                            f"expected (N, H, W) images and N labels")
        out[split] = (x[..., None], y)
    if "train" not in out:
        raise DataError(f"{folder} has no {STEMS['train'][0]}[.gz] and "
                        f"{STEMS['train'][1]}[.gz]")
    return out
