"""Collect and read benchmark: a folder of small JPEGs in, a streaming store out.

    python benchmarks/collect_read.py [--images 10000] [--smoke] [--out FILE]

Reports images/s for collect (decode, resize, shard, checksum) and for streaming
the store back (parse, decode, batch), and the peak RSS of a process reading a
store 10x larger than the 1x case (target: within 1.2x, i.e. memory does not grow
with the dataset).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pretrainer.precision import cpu_name  # noqa: E402  (a light module: no TF)

READER = """
import resource, sys, time
from pretrainer.data import pipeline
t0, n = time.perf_counter(), 0
for x in pipeline.images(sys.argv[1], "unlabeled", batch_size=256, labels=False, cache=False):
    n += int(x.shape[0])
print(n, time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def make_jpegs(folder: Path, n: int, classes: int = 10) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        d = folder / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (1, 1, 3))
        img = np.clip(base + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"{i}.jpg", quality=90)


def read_store(store: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", READER, str(store)], capture_output=True,
                         text=True, check=True, env=env).stdout.split()
    n, seconds, rss_kb = int(out[0]), float(out[1]), int(out[2])
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds,
            "peak_rss_mib": rss_kb / 1024}


def synthetic_store(path: Path, n: int) -> None:
    from pretrainer.config import DataConfig
    from pretrainer.data.sources import SourceData
    from pretrainer.data.store import build_store

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n) % 10
    build_store(path, DataConfig(val_fraction=0.0, test_fraction=0.01, shard_size=4096), 0,
                SourceData(x_pool=x, y_pool=y, class_names=[str(i) for i in range(10)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "collect_read.json")
    args = ap.parse_args()
    n = 500 if args.smoke else args.images
    from pretrainer.config import DataConfig
    from pretrainer.data import sources
    from pretrainer.data.store import build_store

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_jpegs(tmp / "jpegs", n)
        cfg = DataConfig(source="image_folder", path=str(tmp / "jpegs"), image_size=[32, 32],
                         labeled_fraction=0.1)
        t0 = time.perf_counter()
        build_store(tmp / "store", cfg, 0, sources.load(cfg))
        collect_s = time.perf_counter() - t0
        read = read_store(tmp / "store")
        synthetic_store(tmp / "x1", n)
        synthetic_store(tmp / "x10", 10 * n)
        rss1, rss10 = read_store(tmp / "x1"), read_store(tmp / "x10")
    results = {
        "collect_images_per_s": n / collect_s, "collect_seconds": collect_s,
        "read_images_per_s": read["images_per_s"],
        "rss_1x_mib": rss1["peak_rss_mib"], "rss_10x_mib": rss10["peak_rss_mib"],
        "rss_ratio_10x_over_1x": rss10["peak_rss_mib"] / rss1["peak_rss_mib"],
        "images": n, "smoke": args.smoke, "cpu": cpu_name(),
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"on {cpu_name()}\n")
    print("| measure | value |\n|---|---|")
    print(f"| collect ({n} JPEGs, 32x32) | {results['collect_images_per_s']:.0f} images/s |")
    print(f"| read back (streaming) | {results['read_images_per_s']:.0f} images/s |")
    print(f"| peak RSS reading {n} / {10 * n} images | {results['rss_1x_mib']:.0f} / "
          f"{results['rss_10x_mib']:.0f} MiB (ratio {results['rss_ratio_10x_over_1x']:.2f}) |")


if __name__ == "__main__":
    main()
