"""Peak memory of `pretrainer pretrain` as the data grows: N images against 100 N.

    python benchmarks/memory_scale.py [--n 5000] [--factor 100] [--smoke]

Writes two IDX folders of 28x28 grayscale images (Fashion-MNIST from Debian's
`dataset-fashion-mnist`, else the bundled sample, tiled with 1-2 pixel shifts so the
copies are distinct images), collects each into a store (not measured), then runs
`pretrainer pretrain --config fashion_ae` for one epoch on each in a fresh process
and reads that process's peak RSS: once with the default `data.cache=true` (splits
under 512 MB are cached decoded, as uint8) and once streamed from the store
(`data.cache=false`). Prints a table of the peak RSS and its ratio to N's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from throughput import _peak_rss_mib  # noqa: E402  (a peer script: one way to read peak RSS)

from pretrainer.precision import cpu_name  # noqa: E402  (a light module: no TF)

IDX = Path("/usr/share/datasets/fashion-mnist")


def _images() -> tuple[np.ndarray, np.ndarray, str]:
    """(uint8 images N x 28 x 28, labels, where they came from), read by pretrainer's
    own sources: Debian's IDX files when installed, else the bundled sample."""
    from pretrainer.config import DataConfig
    from pretrainer.data import sources

    if (IDX / "train-images-idx3-ubyte.gz").is_file():
        cfg, what = DataConfig(source="idx", path=str(IDX)), "full Fashion-MNIST (Debian IDX files)"
    else:
        cfg, what = DataConfig(), "bundled Fashion-MNIST sample"
    src = sources.load(cfg)
    return src.x_pool[..., 0], src.y_pool, what


def write_folder(folder: Path, x: np.ndarray, y: np.ndarray, size: int) -> None:
    """`size` training images: x tiled, copy k shifted by a distinct (dy, dx)."""
    folder.mkdir(parents=True)
    shifts = [(dy, dx) for dy in (0, 1, -1, 2, -2) for dx in (0, 1, -1, 2, -2)]
    reps = -(-size // len(x))
    if reps > len(shifts):
        raise SystemExit(f"at most {len(shifts) * len(x)} distinct images from {len(x)}")
    train = np.empty((reps * len(x), 28, 28), np.uint8)
    for k in range(reps):
        train[k * len(x):(k + 1) * len(x)] = np.roll(x, shifts[k], axis=(1, 2))
    from pretrainer.data.idx import write_idx

    write_idx(folder / "train-images-idx3-ubyte", train[:size])
    write_idx(folder / "train-labels-idx1-ubyte", np.tile(y, reps)[:size])
    write_idx(folder / "t10k-images-idx3-ubyte", x[:1000])
    write_idx(folder / "t10k-labels-idx1-ubyte", y[:1000])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--factor", type=int, default=100)
    ap.add_argument("--smoke", action="store_true", help="N=600, 4 N: checks the harness")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "memory_scale.json")
    args = ap.parse_args()
    n, factor = (600, 4) if args.smoke else (args.n, args.factor)
    x, y, source = _images()
    cli = [sys.executable, "-m", "pretrainer"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (n, factor * n):
            folder = Path(tmp) / f"idx-{size}"
            write_folder(folder, x, y, size)
            base = ["--config", "fashion_ae", "data=fashion_mnist_idx", f"data.path={folder}",
                    f"data.name=scale{size}", "data.val_fraction=0.01", "trainer.epochs=1",
                    "trainer.verbose=false", f"paths.data={tmp}/data", f"paths.runs={tmp}/runs"]
            subprocess.run([*cli, "collect", *base], check=True, capture_output=True)
            row = {"images": size}
            for key, cache in (("cached", "true"), ("streamed", "false")):
                row[key] = _peak_rss_mib([*cli, "pretrain", *base, f"data.cache={cache}"], ROOT)
                print(json.dumps({**row, "measured": key}), flush=True)
            rows.append(row)
    small, large = rows
    result = {"source": source, "rows": rows, "factor": factor, "smoke": args.smoke,
              "cpu": cpu_name(),
              "ratio_cached": large["cached"] / small["cached"],
              "ratio_streamed": large["streamed"] / small["streamed"]}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\npretrain peak RSS (MiB), {source}, one epoch, fashion_ae, {cpu_name()}")
    print("| images | data.cache=true (default) | data.cache=false (streamed) |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['images']} | {r['cached']:.0f} | {r['streamed']:.0f} |")
    print(f"| ratio {factor}x / 1x | {result['ratio_cached']:.2f} | "
          f"{result['ratio_streamed']:.2f} |")
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
