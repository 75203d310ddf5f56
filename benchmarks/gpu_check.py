"""The GPU check: what a lent GPU machine should be asked, in one run of under 10 minutes.

    benchmarks/gpu_check.sh            (python benchmarks/gpu_check.py [--quick] [--out F])

Prints, on whatever devices TensorFlow sees (a CPU too, with --quick for a small size):
1. the devices, and the precision `trainer.precision=auto` picks for each workload;
2. samples/s of auto's pick against float32 (and the other mixed policy) for the seed CNN
   classifier at 50k images, the SimCLR pretext on conv_ae, and the masked-LM transformer;
3. the input pipeline alone (a real store read with tf.data: parse, augment, batch)
   against the training step on the same stream, so an input-bound run shows;
4. XLA (jit_compile) on against off for the seed CNN.
Alternating rounds, medians; every ratio is against a baseline measured in the same run.
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
sys.path.insert(0, str(ROOT / "benchmarks"))


def devices() -> dict:
    import tensorflow as tf

    from pretrainer import precision

    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for g in gpus:
        try:
            names.append(tf.config.experimental.get_device_details(g).get("device_name", g.name))
        except (ValueError, RuntimeError):
            names.append(g.name)
    picks = {w: precision.resolve("auto", spec)[0] for w, spec in (
        ("seed_cnn (images)", {"modality": "image", "backbone": "seed_cnn"}),
        ("conv_ae + simclr", {"modality": "image", "backbone": "conv_ae", "pretext": "simclr"}),
        ("transformer (text)", {"modality": "text", "backbone": "transformer"}))}
    return {"gpus": names, "cpu": precision.cpu_name(), "auto_picks": picks,
            "tensorflow": tf.__version__}


def _mlm(policy: str, batch: int, steps: int, length: int = 64) -> float:
    """samples/s of the masked-LM pretext on random token ids."""
    import keras
    import numpy as np
    import tensorflow as tf

    from pretrainer.config import LanguageModelConfig, TransformerConfig
    from pretrainer.models import build_backbone
    from pretrainer.pretext.language import build_masked_lm, masked_targets

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    bcfg = TransformerConfig(name="transformer", causal=False, vocabulary_size=8000,
                          sequence_length=length)
    model = build_masked_lm(build_backbone((length,), bcfg), LanguageModelConfig(name="masked_lm"),
                            bcfg, 0)
    ids = np.random.default_rng(0).integers(5, 8000, (batch * (steps + 3), length), np.int32)
    ds = tf.data.Dataset.from_tensor_slices(ids).batch(batch).map(
        masked_targets(8000, length)).prefetch(2)
    model.fit(ds.take(3), epochs=1, verbose=0)  # compile
    t0 = time.perf_counter()
    model.fit(ds.skip(3), epochs=1, verbose=0)
    return batch * steps / (time.perf_counter() - t0)


def policies_table(quick: bool, gpu: bool, rounds: int) -> list[dict]:
    import precision as pbench  # benchmarks/precision.py: the image models and their timing

    from pretrainer import precision

    others = ["mixed_float16", "mixed_bfloat16"] if gpu else ["mixed_bfloat16"]
    images = 2048 if quick else 50_000
    rows = []
    for name, workload, batch in (
            ("seed_cnn_classifier", {"modality": "image", "backbone": "seed_cnn"}, 128),
            ("simclr", {"modality": "image", "backbone": "conv_ae", "pretext": "simclr"}, 256),
            ("masked_lm", {"modality": "text", "backbone": "transformer"}, 64)):
        steps = max(3, (images if name == "seed_cnn_classifier" else images // 4) // batch)
        if quick:  # it checks the script runs (a CPU emulates bf16 slowly): small and short
            batch, steps = max(16, batch // 4), 4
        auto = precision.resolve("auto", workload)[0]
        per = {p: [] for p in ["float32", *others]}
        for _ in range(rounds):
            for p in per:
                per[p].append(_mlm(p, batch, steps) if name == "masked_lm"
                              else pbench.measure(name, p, batch, steps))
        med = {p: statistics.median(v) for p, v in per.items()}
        rows.append({"model": name, "batch": batch, "steps": steps, "auto": auto,
                     "samples_per_s": med,
                     "vs_float32": {p: med[p] / med["float32"] for p in med}})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def input_vs_step(quick: bool, rounds: int) -> dict:
    """The bundled sample's store read alone vs the seed CNN trained on the same stream."""
    import keras

    from pretrainer.config import ConvConfig
    from pretrainer.data import pipeline
    from pretrainer.models import build_backbone
    from pretrainer.models.heads import classifier

    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    subprocess.run([str(Path(sys.executable).with_name("pretrainer")), "collect", "-c",
                    "fashion_ae", "data.labeled_fraction=1.0", "trainer.verbose=false"],
                   cwd=work, check=True, capture_output=True)
    store = next((work / "data").glob("fashion_mnist_small*"))
    batch = 128
    steps = 10 if quick else 40

    def stream():
        return pipeline.images(store, "train", batch_size=batch, shuffle=True, repeat=True,
                               augment="shift_flip", seed=0)

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    model = classifier(build_backbone((28, 28, 1), ConvConfig(
        name="seed_cnn", filters=[32, 64, 64], latent_dim=64, batch_norm=False)), 10)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(stream(), steps_per_epoch=3, epochs=1, verbose=0)
    read, train = [], []
    for _ in range(rounds):
        it = iter(stream())
        next(it)
        t0 = time.perf_counter()
        for _ in range(steps):
            next(it)
        read.append(batch * steps / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        model.fit(stream(), steps_per_epoch=steps, epochs=1, verbose=0)
        train.append(batch * steps / (time.perf_counter() - t0))
    out = {"input_examples_per_s": statistics.median(read),
           "train_examples_per_s": statistics.median(train)}
    out["input_bound"] = out["input_examples_per_s"] < 1.2 * out["train_examples_per_s"]
    return out


def xla(quick: bool, rounds: int) -> dict:
    import keras
    import numpy as np

    from pretrainer.config import ConvConfig
    from pretrainer.models import build_backbone
    from pretrainer.models.heads import classifier

    batch, steps = 128, (8 if quick else 100)
    x = np.random.default_rng(0).random((batch * steps, 28, 28, 1), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 10, len(x))
    per = {True: [], False: []}
    for _ in range(rounds):
        for jit in per:
            keras.backend.clear_session()
            keras.mixed_precision.set_global_policy("float32")
            model = classifier(build_backbone((28, 28, 1), ConvConfig(
                name="seed_cnn", filters=[32, 64, 64], latent_dim=64, batch_norm=False)), 10)
            model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                          jit_compile=jit)
            model.fit(x[:batch * 3], y[:batch * 3], batch_size=batch, verbose=0)
            t0 = time.perf_counter()
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
            per[jit].append(batch * steps / (time.perf_counter() - t0))
    on, off = statistics.median(per[True]), statistics.median(per[False])
    return {"xla_on": on, "xla_off": off, "on_vs_off": on / off}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a CPU, or a smoke test)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu_check.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    found = devices()
    rounds = 1 if args.quick else args.rounds
    result = {"devices": found,
              "precision": policies_table(args.quick, bool(found["gpus"]), rounds),
              "input_vs_step": input_vs_step(args.quick, rounds),
              "xla": xla(args.quick, rounds),
              "_meta": {"smoke": args.quick, "seconds": None}}
    result["_meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\ndevices: {', '.join(found['gpus']) or 'no GPU'}; CPU {found['cpu']}; "
          f"TensorFlow {found['tensorflow']}")
    print("auto picks: " + ", ".join(f"{k} -> {v}" for k, v in found["auto_picks"].items()))
    print("\n| model | batch | float32 samples/s | auto picks | "
          + " | ".join(f"{p} / float32" for p in result["precision"][0]["vs_float32"]
                       if p != "float32") + " |")
    print("|---|---|---|---|" + "---|" * (len(result["precision"][0]["vs_float32"]) - 1))
    for r in result["precision"]:
        print(f"| {r['model']} | {r['batch']} | {r['samples_per_s']['float32']:.0f} | "
              f"{r['auto']} | " + " | ".join(f"{v:.2f}x" for p, v in r["vs_float32"].items()
                                             if p != "float32") + " |")
    io = result["input_vs_step"]
    print(f"\ninput pipeline alone {io['input_examples_per_s']:.0f} examples/s, training "
          f"step on it {io['train_examples_per_s']:.0f} examples/s"
          + ("  <- input-bound" if io["input_bound"] else ""))
    x = result["xla"]
    print(f"XLA on {x['xla_on']:.0f} vs off {x['xla_off']:.0f} samples/s "
          f"({x['on_vs_off']:.2f}x)")
    print(f"\n{result['_meta']['seconds']:.0f} s in all")


if __name__ == "__main__":
    main()
