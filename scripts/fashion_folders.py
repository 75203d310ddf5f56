"""Write Debian's full Fashion-MNIST (apt-get install dataset-fashion-mnist) as PNG class
folders: OUT/{train,test}/<class>/img NNNNN.png, sorted by class like any folder tree, with
spaces and brackets in the names. Real user-shaped data for scripts/compare_sorted_folders.py.

    python scripts/fashion_folders.py /tmp/fm
"""

import gzip
import sys
from pathlib import Path

import numpy as np
from PIL import Image

BASE = Path("/usr/share/datasets/fashion-mnist")
NAMES = ["T-shirt top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot [b]"]


def idx(path: Path) -> np.ndarray:
    data = gzip.open(path).read()
    if data[3] == 3:
        n, h, w = np.frombuffer(data[4:16], ">i4")
        return np.frombuffer(data[16:], np.uint8).reshape(n, h, w)
    return np.frombuffer(data[8:], np.uint8)


def main(out: Path) -> None:
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = idx(BASE / f"{prefix}-images-idx3-ubyte.gz")
        y = idx(BASE / f"{prefix}-labels-idx1-ubyte.gz")
        for name in NAMES:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(x, y, strict=True)):
            Image.fromarray(image).save(out / split / NAMES[label] / f"img {i:05d}.png")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "fashion_folders"))
