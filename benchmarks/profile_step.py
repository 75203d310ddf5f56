"""Where a training step of the seed CNN spends its time, from TensorFlow's profiler.

    python benchmarks/profile_step.py [--precision float32] [--batch 64] [--steps 100]
    python benchmarks/profile_step.py --read LOGDIR --steps 100   # parse a trace only

Trains the seed's CNN (28x28x1, built as benchmarks/run.py builds it, Keras
`model.fit` on NumPy arrays as the seed recipe runs it) for a warm-up, times 400 steps, then
records `--steps` steps with `tf.profiler` into --logdir (open it with TensorBoard's
profile plugin, or xprof). When the `xprof` package is installed (`pip install
xprof`; not a dependency of pretrainer) it also prints the op types by self time and
their share of the busy time; `--read` does only that, in any environment with xprof
(it does not import TensorFlow).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # peer scripts

def op_breakdown(logdir: str) -> list[tuple[str, float, int]]:
    """(op type, self seconds, occurrences) of the profiled steps, busiest first."""
    from xprof.convert import raw_to_tool_data

    files = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
    data, _ = raw_to_tool_data.xspace_to_tool_data(files, "framework_op_stats^", {})
    table = json.loads(data)[0]
    cols = [c["id"] for c in table["cols"]]
    seconds, count = collections.Counter(), collections.Counter()
    for row in table["rows"]:
        r = dict(zip(cols, [c.get("v") for c in row["c"]], strict=False))
        if r["type"] != "IDLE":
            seconds[r["type"]] += r["total_self_time"] / 1e6
            count[r["type"]] += int(r["occurrences"])
    return [(t, s, count[t]) for t, s in seconds.most_common()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--logdir", default=None)
    ap.add_argument("--read", default=None, help="print the op breakdown of this trace")
    args = ap.parse_args()
    if args.read:
        print_breakdown(args.read, args.steps)
        return
    import keras
    import numpy as np
    import tensorflow as tf
    from run import _seed_cnn  # the seed's CNN as the other benchmarks build it
    from throughput import forward_flops

    keras.mixed_precision.set_global_policy(args.precision)
    rng = np.random.default_rng(0)
    n = args.batch * 400
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, n)]
    model = _seed_cnn(x.shape[1:], 10)
    flops = forward_flops(lambda t: model(t, training=False),
                          tf.TensorSpec([1, 28, 28, 1], tf.float32))
    model.fit(x[:args.batch * 50], y[:args.batch * 50], batch_size=args.batch, verbose=0)
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=args.batch, verbose=0)
    step_s = (time.perf_counter() - t0) / 400
    gflops = 3 * flops * args.batch / step_s / 1e9  # training ~ 3x forward
    print(f"seed CNN, {args.precision}, batch {args.batch}: {1e3 * step_s:.1f} ms per step, "
          f"{args.batch / step_s:,.0f} samples/s, {gflops:.0f} GFLOP/s achieved")
    logdir = args.logdir or tempfile.mkdtemp(prefix="profile_step-")
    tf.profiler.experimental.start(logdir)
    m = args.batch * args.steps
    model.fit(x[:m], y[:m], batch_size=args.batch, verbose=0)
    tf.profiler.experimental.stop()
    print(f"trace: {logdir}")
    print_breakdown(logdir, args.steps)


def print_breakdown(logdir: str, steps: int) -> None:
    try:
        ops = op_breakdown(logdir)
    except ImportError:
        print("(pip install xprof to print the op breakdown here, or pass --read LOGDIR to "
              "this script where xprof is installed)")
        return
    busy = sum(s for _, s, _ in ops)
    print(f"\n{busy / steps * 1e3:.1f} ms of op time per step (all threads)\n"
          "| op type | ms per step | share of op time |\n|---|---|---|")
    for name, s, _ in ops[:12]:
        print(f"| {name} | {1e3 * s / steps:.2f} | {100 * s / busy:.1f} % |")


if __name__ == "__main__":
    main()
