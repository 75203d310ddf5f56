"""Build the small samples bundled in the package.

Images: Debian's `dataset-fashion-mnist` (Zalando SE, MIT/Expat licence),
installed with `apt-get install dataset-fashion-mnist`. We keep a stratified,
seeded subset so the demo runs offline in minutes:
600 training images per class (6000) and 100 test images per class (1000).

Text: Debian's `fortunes` (BSD fortune(6) data, The Regents of the University of
California), `apt-get install fortunes`: up to 200 short fortunes from each of
five category files, the category being the label.

Usage: python scripts/make_samples.py [--src DIR] [--out FILE] [--text-only]
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np

SRC = Path("/usr/share/datasets/fashion-mnist")
OUT = Path(__file__).resolve().parent.parent / "pretrainer/data/samples/fashion_mnist_small.npz"
CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
             for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


FORTUNES = Path("/usr/share/games/fortunes")
TEXT_OUT = OUT.with_name("fortunes_small.json.gz")
TEXT_CATEGORIES = ["art", "computers", "food", "literature", "science"]


def make_text(src: Path = FORTUNES, out: Path = TEXT_OUT, per_class: int = 200,
              max_chars: int = 400) -> None:
    import json
    import re

    rng = np.random.default_rng(19910101)
    texts, labels = [], []
    for c, name in enumerate(TEXT_CATEGORIES):
        raw = (src / name).read_text(encoding="utf-8", errors="replace")
        docs = [d.strip() for d in re.split(r"^%$", raw, flags=re.MULTILINE)]
        docs = [d for d in docs if 20 <= len(d) <= max_chars]
        pick = rng.choice(len(docs), min(per_class, len(docs)), replace=False)
        texts += [docs[i] for i in sorted(pick)]
        labels += [c] * len(pick)
    payload = {"class_names": TEXT_CATEGORIES, "texts": texts, "labels": labels,
               "source": "Debian fortunes (BSD fortune(6) data)"}
    with gzip.open(out, "wt", encoding="utf-8") as f:
        json.dump(payload, f)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB): {len(texts)} texts")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=SRC)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--train-per-class", type=int, default=600)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--text-only", action="store_true", help="only rebuild the text sample")
    args = ap.parse_args()
    make_text()
    if args.text_only:
        return
    rng = np.random.default_rng(20171028)  # Fashion-MNIST's release date: any fixed seed
    x_tr = read_idx(args.src / "train-images-idx3-ubyte.gz")
    y_tr = read_idx(args.src / "train-labels-idx1-ubyte.gz")
    x_te = read_idx(args.src / "t10k-images-idx3-ubyte.gz")
    y_te = read_idx(args.src / "t10k-labels-idx1-ubyte.gz")
    i_tr = stratified(y_tr, args.train_per_class, rng)
    i_te = stratified(y_te, args.test_per_class, rng)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        x_train=x_tr[i_tr], y_train=y_tr[i_tr].astype(np.int64),
        x_test=x_te[i_te], y_test=y_te[i_te].astype(np.int64),
        class_names=np.array(CLASSES),
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB): "
          f"{len(i_tr)} train, {len(i_te)} test")


if __name__ == "__main__":
    main()
