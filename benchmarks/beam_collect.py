"""collect on Apache Beam's local runner against the in-process path, as the pool grows:
N, 10 N and 100 N images.

    python benchmarks/beam_collect.py [--n 1000] [--factors 1 10 100] [--workers 2]
                                      [--rules stratified hash] [--smoke]

Writes class folders of 28x28 grayscale PNGs (Fashion-MNIST from Debian's
`dataset-fashion-mnist`, else the bundled sample, tiled with 1-2 pixel shifts so the
copies are distinct images), then runs `pretrainer collect -c folder_ae` on each size
twice, in fresh processes: `collect.runner=inprocess` and `collect.runner=beam`. While
each runs, the resident memory of its whole process tree (the launcher and, for Beam,
its worker processes) is sampled every 0.1 s from /proc. Prints, per size: wall time,
peak RSS of the launching process and of the tree, and whether the two stores are
identical (every file compared); writes the figures as JSON (--out). `--rules`: the
data.split_rule values to run (hash: the launcher streams instead of holding a plan of
every record, pretrainer/data/beam_hash.py).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from memory_scale import _images  # noqa: E402  (a peer script: the same source images)

from pretrainer.precision import cpu_name  # noqa: E402  (a light module: no TF)

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle boot"]


def write_pngs(folder: Path, x: np.ndarray, y: np.ndarray, size: int) -> None:
    """`size` PNGs in class folders; copy k of an image shifted by a distinct (dy, dx)."""
    from PIL import Image

    shifts = [(dy, dx) for dy in (0, 1, -1, 2, -2) for dx in (0, 1, -1, 2, -2)]
    for c in CLASSES:
        (folder / c).mkdir(parents=True)
    for i in range(size):
        k, j = divmod(i, len(x))
        img = np.roll(x[j], shifts[k % len(shifts)], axis=(0, 1))
        Image.fromarray(img).save(folder / CLASSES[int(y[j])] / f"img {i:06d}.png")


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return out


def measure(cmd: list[str]) -> dict:
    """Run cmd; its wall time and the peak RSS (MiB) of it and of its process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "NO_COLOR": "1"})
    peak = {"launcher": 0, "tree": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            pids = _tree(proc.pid)
            sizes = [_rss_kib(p) for p in pids]
            peak["launcher"] = max(peak["launcher"], sizes[0] if sizes else 0)
            peak["tree"] = max(peak["tree"], sum(sizes))
            done.wait(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return {"seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mib_launcher": round(peak["launcher"] / 1024, 1),
            "peak_rss_mib_tree": round(peak["tree"] / 1024, 1)}


def identical(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return not mismatch and not errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rules", nargs="+", default=["stratified"],
                    choices=["stratified", "hash"], help="data.split_rule values to run")
    ap.add_argument("--smoke", action="store_true", help="200 and 2,000 images (a check)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "beam_collect.json"))
    args = ap.parse_args()
    if args.smoke:
        args.n, args.factors = 200, [1, 10]
    x, y, what = _images()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for factor in args.factors:
            size = args.n * factor
            folder = Path(tmp) / f"images {size}"
            write_pngs(folder, x, y, size)
            for rule in args.rules:
                base = [sys.executable, "-m", "pretrainer", "collect", "-c", "folder_ae",
                        f"data.path='{folder}'", "data.image_size=[28,28]",
                        "data.color=grayscale", f"data.split_rule={rule}"]
                row = {"images": size, "rule": rule}
                for runner in ("inprocess", "beam"):
                    row[runner] = measure([*base, f"paths.data={tmp}/{runner}-{rule}-{size}",
                                           f"collect.runner={runner}",
                                           f"collect.workers={args.workers}"])
                row["identical"] = identical(
                    Path(tmp) / f"inprocess-{rule}-{size}" / "image_folder",
                    Path(tmp) / f"beam-{rule}-{size}" / "image_folder")
                rows.append(row)
                print(json.dumps(row), flush=True)
            shutil.rmtree(folder)  # 100x a base size: keep the disk to the size at hand
    result = {"_meta": {"cpu": cpu_name(), "cores": os.cpu_count(), "data": what,
                        "workers": args.workers, "smoke": args.smoke}, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\ncollect of 28x28 PNG class folders ({what}), {cpu_name()}, "
          f"{args.workers} Beam workers (local runner)\n")
    print("| images | split rule | in-process: s / peak RSS MiB | Beam: s / launcher peak RSS "
          "/ tree peak RSS MiB | identical stores |")
    print("|---|---|---|---|---|")
    for r in rows:
        i, b = r["inprocess"], r["beam"]
        print(f"| {r['images']:,} | {r['rule']} | {i['seconds']} / {i['peak_rss_mib_tree']} | "
              f"{b['seconds']} / {b['peak_rss_mib_launcher']} / {b['peak_rss_mib_tree']} | "
              f"{'yes' if r['identical'] else 'NO'} |")


if __name__ == "__main__":
    main()
