"""Data sources: where `collect` gets examples from (`data.source=NAME`).

Each source returns a `SourceData`: a labeled training pool, an optional test
split of its own, class names and a description of where the data came from.
Images are uint8 arrays shaped (N, H, W, C).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from pretrainer.config import DataConfig
from pretrainer.data import modalities
from pretrainer.errors import DataError


@dataclass
class SourceData:
    x_pool: np.ndarray  # the source's training images (labels in y_pool)
    y_pool: Optional[np.ndarray]  # None: an unlabeled-only source
    class_names: list[str]
    x_test: Optional[np.ndarray] = None  # the source's own test split, when it has one
    y_test: Optional[np.ndarray] = None
    x_val: Optional[np.ndarray] = None  # the source's own validation split, when it has one
    y_val: Optional[np.ndarray] = None
    x_extra: Optional[np.ndarray] = None  # extra images for the unlabeled split only
    modality: str = "image"  # image | text | tabular
    task: str = "classification"  # classification | regression
    info: dict = field(default_factory=dict)  # where it came from, licence
    skipped: list = field(default_factory=list)  # [{file, reason}] for unreadable inputs
    extra_manifest: dict = field(default_factory=dict)  # e.g. tabular column encodings


def _as_nhwc(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"Expected images shaped (N, H, W[, C]). Received: {x.shape}")
    return x


BUNDLED = {
    "fashion_mnist_small": "fashion_mnist_small.npz",
}


def load_bundled(cfg: DataConfig) -> SourceData:
    """Samples shipped inside the package (see scripts/make_samples.py)."""
    if cfg.dataset not in BUNDLED:
        raise DataError(f"Unknown bundled dataset '{cfg.dataset}'. Choose from: "
                        f"{', '.join(BUNDLED)}")
    path = Path(str(resources.files("pretrainer.data") / "samples" / BUNDLED[cfg.dataset]))
    if not path.is_file():
        raise DataError(f"Bundled sample {path} is missing: reinstall pretrainer")
    with np.load(path) as z:
        return SourceData(
            x_pool=_as_nhwc(z["x_train"]), y_pool=z["y_train"].astype(np.int64),
            x_test=_as_nhwc(z["x_test"]), y_test=z["y_test"].astype(np.int64),
            class_names=[str(c) for c in z["class_names"]],
            info={"file": path.name, "licence": "MIT (Zalando SE), see samples/LICENSE-fashion-mnist.txt"},
        )


KERAS_TEXT = {"imdb": ["negative", "positive"]}

KERAS_DATASETS = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["t-shirt/top", "trouser", "pullover", "dress", "coat",
                      "sandal", "shirt", "sneaker", "bag", "ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"],
    "cifar100": [str(i) for i in range(100)],
}


def load_keras(cfg: DataConfig) -> SourceData:
    """keras.datasets: downloads once into ~/.keras/datasets, then works offline."""
    if cfg.dataset not in KERAS_DATASETS and cfg.dataset not in KERAS_TEXT:
        raise DataError(f"Unknown keras dataset '{cfg.dataset}'. Choose from: "
                        f"{', '.join([*KERAS_DATASETS, *KERAS_TEXT])}")
    import keras

    module = getattr(keras.datasets, cfg.dataset)
    try:
        (x_tr, y_tr), (x_te, y_te) = module.load_data()
        if cfg.dataset in KERAS_TEXT:
            words = {i + 3: w for w, i in module.get_word_index().items()}
            x_tr, x_te = (np.array([" ".join(words.get(i, "") for i in seq[1:]).strip()
                                    for seq in xs], dtype=object) for xs in (x_tr, x_te))
    except Exception as exc:  # keras raises a bare Exception on URL failures
        raise DataError(
            f"Could not load keras dataset '{cfg.dataset}' (no network and not in the Keras "
            f"cache ~/.keras/datasets): {str(exc).splitlines()[0][:160]}. Alternatives: "
            f"the bundled sample (--config fashion_ae), scikit-learn digits (--config digits_ae), "
            f"or copy the dataset file into ~/.keras/datasets"
        ) from exc
    text = modalities.get(cfg.modality).strings
    return SourceData(
        x_pool=x_tr if text else _as_nhwc(x_tr),
        y_pool=np.asarray(y_tr).reshape(-1).astype(np.int64),
        x_test=x_te if text else _as_nhwc(x_te),
        y_test=np.asarray(y_te).reshape(-1).astype(np.int64),
        class_names={**KERAS_DATASETS, **KERAS_TEXT}[cfg.dataset],
        modality="text" if text else "image", info={"keras_dataset": cfg.dataset},
    )


def load_sklearn(cfg: DataConfig) -> SourceData:
    """scikit-learn's bundled datasets (no download)."""
    if cfg.dataset != "digits":
        raise DataError(f"Unknown sklearn dataset '{cfg.dataset}'. Choose from: digits")
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 0..16 intensities, rescaled to the 0..255 every image path expects.
    x = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return SourceData(x_pool=_as_nhwc(x), y_pool=digits.target.astype(np.int64),
                      class_names=[str(c) for c in digits.target_names],
                      info={"sklearn_dataset": "digits", "licence": "BSD-3-Clause (scikit-learn)"})


def load_image_folder(cfg: DataConfig) -> SourceData:
    """A folder of images: class folders, train/test[/val] folders, or unlabeled (folders.py)."""
    from pretrainer.data.folders import load_folder

    r = load_folder(cfg.path, cfg.image_size, cfg.color, cfg.split_rule == "hash")
    return SourceData(x_pool=r["x_pool"], y_pool=r["y_pool"], class_names=r["class_names"],
                      x_test=r.get("x_test"), y_test=r.get("y_test"),
                      x_val=r.get("x_val"), y_val=r.get("y_val"), skipped=r["skipped"],
                      info={"path": str(cfg.path), "layout": r["layout"],
                            "color": "grayscale" if r["mode"] == "L" else "rgb",
                            "image_size": list(r["size"]),
                            "empty_class_folders": r.get("empty_classes", [])})


def load_text_files(cfg: DataConfig) -> SourceData:
    """Folders of .txt files: class folders (labeled) or any .txt files (unlabeled)."""
    from pretrainer.data.textfiles import load_text_files as load

    r = load(cfg.path, cfg.text_split, cfg.encoding)
    return SourceData(x_pool=r["texts"], y_pool=r["labels"], class_names=r["class_names"],
                      modality="text", skipped=r["skipped"],
                      info={"path": str(cfg.path), "layout": r["layout"],
                            "text_split": cfg.text_split, "files_by_encoding": r["codecs"]})


def load_idx(cfg: DataConfig) -> SourceData:
    """A folder of IDX files (MNIST, Fashion-MNIST, KMNIST layout), e.g. Debian's
    dataset-fashion-mnist in /usr/share/datasets/fashion-mnist."""
    from pretrainer.data.idx import load_idx_folder

    if not cfg.path:
        raise DataError("data.source=idx needs data.path=<folder with train-images-idx3-ubyte"
                        "[.gz] and friends>")
    splits = load_idx_folder(cfg.path)
    x, y = splits["train"]
    n = int(max(y.max(), splits["test"][1].max() if "test" in splits else 0)) + 1
    names = KERAS_DATASETS.get(cfg.dataset)
    if names is None or len(names) != n:
        names = [str(i) for i in range(n)]
    x_te, y_te = splits.get("test", (None, None))
    return SourceData(x_pool=x, y_pool=y, x_test=x_te, y_test=y_te, class_names=names,
                      info={"path": str(cfg.path), "format": "idx"})


BUNDLED_TEXT = {"fortunes_small": "fortunes_small.json.gz"}
BUNDLED_CSV = {"house": "house.csv"}  # the seed's worked example: price = 2 x area


def load_bundled_text(cfg: DataConfig) -> SourceData:
    """The fortunes sample shipped in the package (see scripts/make_samples.py)."""
    import gzip
    import json

    if cfg.dataset not in BUNDLED_TEXT:
        raise DataError(f"Unknown bundled text dataset '{cfg.dataset}'. Choose from: "
                        f"{', '.join(BUNDLED_TEXT)}")
    path = Path(str(resources.files("pretrainer.data") / "samples" / BUNDLED_TEXT[cfg.dataset]))
    with gzip.open(path, "rt", encoding="utf-8") as f:
        doc = json.load(f)
    return SourceData(x_pool=np.array(doc["texts"], dtype=object),
                      y_pool=np.array(doc["labels"], np.int64), class_names=doc["class_names"],
                      modality="text",
                      info={"file": path.name, "licence": "BSD (fortune(6) data), see "
                                                          "samples/LICENSE-fortunes.txt"})


def load_csv(cfg: DataConfig) -> SourceData:
    """A CSV of feature columns and an optional target column (tabular.py)."""
    from pretrainer.data.tabular import load_csv as load

    path = cfg.path
    if not path and cfg.dataset in BUNDLED_CSV:  # a table shipped in the package
        path = str(resources.files("pretrainer.data") / "samples" / BUNDLED_CSV[cfg.dataset])
    r = load(path, cfg.target, cfg.task, cfg.encoding)
    return SourceData(x_pool=r["x"], y_pool=r["y"], class_names=r["class_names"],
                      modality="tabular", task=r["task"],
                      info={"path": str(path), "target": cfg.target,
                            "encoding": r["encoding"],
                            "dropped_rows_without_target":
                                r.get("dropped_rows_without_target", 0)},
                      extra_manifest={"columns": r["encodings"],
                                      "feature_names": r["feature_names"]})


SOURCES: dict[str, Callable[[DataConfig], SourceData]] = {
    "bundled": load_bundled,
    "keras": load_keras,
    "idx": load_idx,
    "sklearn": load_sklearn,
    "image_folder": load_image_folder,
    "text_files": load_text_files,
    "bundled_text": load_bundled_text,
    "csv": load_csv,
}


def load(cfg: DataConfig) -> SourceData:
    """Load `cfg.source`, plus `cfg.extra_unlabeled` images shaped like the source's."""
    src = get_source(cfg.source)(cfg)
    if src.modality != cfg.modality:  # the config checked its options against cfg.modality
        raise DataError(f"data source '{cfg.source}' gave {src.modality} data where "
                        f"{cfg.modality} was expected (pretrainer.config SOURCE_MODALITY)")
    if cfg.extra_unlabeled:
        from pretrainer.data.folders import load_unlabeled_folder

        src.x_extra, skipped = load_unlabeled_folder(cfg.extra_unlabeled, src.x_pool.shape[1:])
        src.skipped += [{**s, "folder": "extra_unlabeled"} for s in skipped]
        src.info["extra_unlabeled"] = {"path": cfg.extra_unlabeled, "count": len(src.x_extra)}
    return src


def get_source(name: str) -> Callable[[DataConfig], SourceData]:
    if name not in SOURCES:
        raise DataError(f"Unknown data source '{name}'. Choose from: {', '.join(SOURCES)}")
    return SOURCES[name]
