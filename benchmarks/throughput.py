"""Pretext throughput vs this machine's matmul ceilings, pretrain memory at N vs 10 N,
and export latency per format vs the Keras model.

    python benchmarks/throughput.py [--smoke] [--out benchmarks/throughput.json]

- ceilings: a chain of 2048x2048 matmuls in float32 and bfloat16 (GFLOP/s), measured
  first in the same run, so achieved GFLOP/s are read against this machine.
- pretext: samples/s (tokens/s for the LM) of one training epoch after a warm-up, for
  autoencoder, simclr, dcgan on 28x28x1 images and causal_lm on 64-token sequences,
  in float32 and mixed_bfloat16. FLOPs per training sample are counted by TensorFlow's
  profiler on the forward graph and multiplied by 3 (forward + backward ~ 3x forward);
  dcgan counts G + D forward for both of its steps.
- memory: peak RSS of `pretrainer pretrain` in a fresh process on N and 10 N images.
- export: median per-sample latency (batch of 1) of SavedModel, LiteRT and ONNX
  (their own runtimes, in-process) against calling the Keras model; alternating rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pretrainer.precision import cpu_name  # noqa: E402  (a light module: no TF)


def matmul_ceiling(dtype: str, n: int = 2048, reps: int = 10) -> float:
    import tensorflow as tf

    a = tf.random.normal([n, n], dtype=tf.float32)
    a = tf.cast(a, dtype)

    @tf.function
    def chain(x):
        for _ in range(reps):
            x = tf.matmul(x, a) * tf.cast(1.0 / n, dtype)
        return tf.reduce_sum(tf.cast(x, tf.float32))

    chain(a).numpy()  # trace + warm up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        chain(a).numpy()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 * reps / best / 1e9


def forward_flops(fn, spec) -> int:
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder

    graph = tf.function(fn).get_concrete_function(spec).graph
    opts = option_builder.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return int(model_analyzer.profile(graph, options=opts).total_float_ops)


def _pretext_model(name: str, precision: str, seq_len: int, vocab: int):
    import keras
    import tensorflow as tf

    from pretrainer.config import ConvConfig, TransformerConfig, option_class
    from pretrainer.models import build_backbone
    from pretrainer.pretext import PRETEXTS

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    if name == "causal_lm":
        bcfg = TransformerConfig(latent_dim=128, num_layers=2, num_heads=4,
                                 intermediate_dim=256, sequence_length=seq_len,
                                 vocabulary_size=vocab, causal=True)
        shape, dtype = (seq_len,), tf.int32
    else:
        bcfg, shape, dtype = ConvConfig(), (28, 28, 1), tf.float32
    backbone = build_backbone(shape, bcfg)
    model = PRETEXTS[name].build(backbone, option_class("pretext", name)(name=name), bcfg, 0)
    one = tf.TensorSpec([1, *shape], dtype)
    if name == "dcgan":
        g = forward_flops(lambda z: model.generator(z, training=True),
                          tf.TensorSpec([1, bcfg.latent_dim], tf.float32))
        d = forward_flops(lambda x: model.discriminator(x, training=True), one)
        flops = 3 * (2 * g + 3 * d)  # D step: G fwd, D on real + fake; G step: G + D
    else:
        flops = 3 * forward_flops(lambda x: model(x, training=True), one)
    return model, shape, flops


def bench_pretexts(n: int, batch: int, seq_len: int = 64, vocab: int = 4000,
                   names: tuple = ("autoencoder", "simclr", "dcgan", "causal_lm")) -> list[dict]:
    import numpy as np
    import tensorflow as tf

    from pretrainer.pretext import PRETEXTS

    rng = np.random.default_rng(0)
    out = []
    for name in names:
        for precision in ("float32", "mixed_bfloat16"):
            model, shape, flops = _pretext_model(name, precision, seq_len, vocab)
            if name == "causal_lm":
                x = rng.integers(1, vocab, (n, seq_len)).astype("int32")
            else:
                x = rng.random((n, *shape)).astype("float32")
            ds = tf.data.Dataset.from_tensor_slices(x).batch(batch, drop_remainder=True)
            ds = ds.map(PRETEXTS[name].targets).cache().repeat()
            steps = n // batch
            model.fit(ds, epochs=1, steps_per_epoch=min(steps, 5), verbose=0)  # trace, warm up
            t0 = time.perf_counter()
            model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
            seconds = time.perf_counter() - t0
            per_s = steps * batch / seconds
            out.append({"pretext": name, "precision": precision,
                        "samples_per_s": per_s,
                        "tokens_per_s": per_s * seq_len if name == "causal_lm" else None,
                        "train_flops_per_sample": flops, "gflop_per_s": per_s * flops / 1e9})
    import keras

    keras.mixed_precision.set_global_policy("float32")
    return out


def _peak_rss_mib(cmd: list[str], cwd: Path) -> float:
    code = ("import resource, subprocess, sys; "
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "sys.exit(p.stderr[-2000:]) if p.returncode else None; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True,
                          cwd=cwd, check=False)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return int(proc.stdout.split()[-1]) / 1024


def bench_memory(n: int, full_data: bool = True) -> dict:
    full = Path("/usr/share/datasets/fashion-mnist")
    data = (["data=fashion_mnist_idx"] if full_data and (full / "train-images-idx3-ubyte.gz"
                                                         ).is_file() else [])
    out = {"data": "full Fashion-MNIST (idx)" if data else "bundled sample"}
    with tempfile.TemporaryDirectory() as tmp:
        for key, size in (("n", n), ("10n", 10 * n)):
            cmd = [sys.executable, "-m", "pretrainer", "pretrain", "--config", "fashion_ae",
                   *data, f"data.max_samples={size}", "trainer.epochs=1",
                   "trainer.verbose=false", "data.val_fraction=0.01"]
            env_root = Path(tmp) / key
            env_root.mkdir()
            out[f"samples_{key}"] = size
            out[f"peak_rss_mib_{key}"] = _peak_rss_mib(
                [*cmd, f"paths.runs={env_root}/runs", f"paths.data={env_root}/data"], ROOT)
    out["ratio"] = out["peak_rss_mib_10n"] / out["peak_rss_mib_n"]
    return out


def bench_export(rounds: int, requests: int) -> dict:
    import keras
    import numpy as np

    from pretrainer.config import ConvConfig
    from pretrainer.exports import litert, onnx, savedmodel
    from pretrainer.exports.parity import RUNTIMES
    from pretrainer.models import build_backbone
    from pretrainer.models.heads import classifier

    keras.utils.set_random_seed(0)
    model = classifier(build_backbone((28, 28, 1), ConvConfig()), 10)
    x = np.random.default_rng(0).random((requests, 28, 28, 1)).astype("float32")
    runners = {"keras": lambda a: model(a, training=False).numpy()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from pretrainer.data.records import StoreManifest

        manifest = StoreManifest.from_json({
            "modality": "image", "task": "classification", "shape": [28, 28, 1],
            "num_classes": 10, "class_names": [str(i) for i in range(10)]})
        paths = {"saved_model": savedmodel.export(model, tmp / "sm", manifest),
                 "litert": litert.export(model, tmp / "model.tflite", manifest, "none", x[:8])}
        try:
            paths["onnx"] = onnx.export(model, tmp / "model.onnx", manifest)
        except Exception as exc:  # the onnx extra is optional
            print(f"onnx skipped: {str(exc).splitlines()[0]}", file=sys.stderr)
        for fmt, path in paths.items():  # float pixels in: the SavedModel's serve_float
            run = RUNTIMES[fmt](str(path), "serve_float")
            runners[fmt] = lambda a, run=run: run({"images": a})
        times: dict[str, list[float]] = {k: [] for k in runners}
        for fn in runners.values():
            fn(x[:1])
        for _ in range(rounds):
            for fmt, fn in runners.items():
                t = []
                for i in range(requests):
                    t0 = time.perf_counter()
                    fn(x[i:i + 1])
                    t.append(time.perf_counter() - t0)
                times[fmt].append(statistics.median(t))
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    return {"p50_ms": med, "speedup_vs_keras": {k: med["keras"] / v for k, v in med.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness runs")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "throughput.json")
    args = ap.parse_args()
    n, batch, mem_n, rounds = (256, 64, 100, 1) if args.smoke else (4096, 128, 5000, 5)
    size = 512 if args.smoke else 2048
    ceilings = {"float32": matmul_ceiling("float32", size),
                "bfloat16": matmul_ceiling("bfloat16", size)}
    results = {"ceilings_gflop_per_s": ceilings,
               # smoke: one image and one text pretext are enough to check the harness
               "pretext": bench_pretexts(n, batch, **({"names": ("simclr", "causal_lm")}
                                                      if args.smoke else {})),
               "memory": bench_memory(mem_n, full_data=not args.smoke),
               "export": bench_export(rounds, 20 if args.smoke else 100),
               "_meta": {"smoke": args.smoke, "cpus": os.cpu_count(), "cpu": cpu_name()}}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"on {cpu_name()}")
    print(f"matmul ceilings: float32 {ceilings['float32']:.0f} GFLOP/s, "
          f"bfloat16 {ceilings['bfloat16']:.0f} GFLOP/s\n")
    print("| pretext | precision | samples/s | tokens/s | GFLOP/s | % of ceiling |")
    print("|---|---|---|---|---|---|")
    for r in results["pretext"]:
        ceil = ceilings["float32" if r["precision"] == "float32" else "bfloat16"]
        tok = f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else "-"
        print(f"| {r['pretext']} | {r['precision']} | {r['samples_per_s']:.0f} | {tok} | "
              f"{r['gflop_per_s']:.1f} | {100 * r['gflop_per_s'] / ceil:.0f} % |")
    m = results["memory"]
    print(f"\nmemory ({m['data']}): pretrain peak RSS {m['peak_rss_mib_n']:.0f} MiB at "
          f"{m['samples_n']} vs {m['peak_rss_mib_10n']:.0f} MiB at {m['samples_10n']} "
          f"(ratio {m['ratio']:.2f})\n")
    e = results["export"]
    print("| format | p50 ms / request | speed vs Keras call |")
    print("|---|---|---|")
    for fmt, ms in e["p50_ms"].items():
        print(f"| {fmt} | {ms:.3f} | {e['speedup_vs_keras'][fmt]:.1f}x |")
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
