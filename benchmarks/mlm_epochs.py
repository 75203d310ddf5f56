"""Masked-LM pretraining on short lines: pretrainer against the plain Keras + keras-hub
recipe on the same texts, in the same run.

    python benchmarks/mlm_epochs.py [--texts DIR] [--epochs 3] [--rounds 2] [--smoke]

Texts: a folder of text files read one text per line (`data=text_files
data.text_split=line`); by default Debian's `fortunes` written as class folders
(scripts/fortune_folders.py; `apt-get install fortunes`), else (and with --smoke) the
bundled fortunes, whole.
Both sides train the same transformer (backbone.* of `text_mlm`) on the store's pool
with the same WordPiece vocabulary, batch 64 and learning rate, for the same epochs:

- plain: the keras-hub recipe a user writes, the texts in memory, `WordPieceTokenizer`
  padding to the sequence length, `MaskedLMMaskGenerator`, `model.fit` (float32, no XLA);
- pretrainer: `pretrainer pretrain -c text_mlm` (batches grouped by length, XLA on the
  CPU as `trainer.jit_compile` auto picks), its fit_seconds.

Alternating rounds, whole processes for pretrainer, medians; prints fit seconds, seconds
per epoch, the ratio plain / pretrainer and each side's validation perplexity, with the
CPU's name. Before this harness (issue 29): 71-90 s per MLM epoch on ~27k short lines at
sequence length 64, 37-43 s at the fitted 32 tokens (docs/benchmarks.md).
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
FORTUNES = Path("/usr/share/games/fortunes")

PLAIN = """
import dataclasses, json, sys, time
from pathlib import Path
import numpy as np, keras, keras_hub, tensorflow as tf
from pretrainer.config import compose
from pretrainer.data import pipeline
from pretrainer.data.modalities.text import load_vocabulary
from pretrainer.models.transformer import transformer
from pretrainer.pretext.language import build_masked_lm
store, vocab_file, length, epochs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def split(name):  # the store's texts, read once into memory as a user's list would be
    return np.concatenate(list(pipeline.texts(store, name, batch_size=1024, labels=False,
                                              cache=False).as_numpy_iterator()))
texts, val = split("unlabeled"), split("val")
vocab = load_vocabulary(Path(vocab_file))
cfg = compose("text_mlm", [])
b = dataclasses.replace(cfg.backbone, vocabulary_size=len(vocab), sequence_length=length)
keras.utils.set_random_seed(0)
tok = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocab, sequence_length=length,
                                               lowercase=True, dtype="int32")
masker = keras_hub.layers.MaskedLMMaskGenerator(vocabulary_size=len(vocab),
    mask_selection_rate=0.15, mask_token_id=2, mask_selection_length=round(length * 0.15),
    unselectable_token_ids=[0])
def prep(t):
    m = masker(tok(t))
    y = tf.where(m["mask_weights"] > 0, tf.cast(m["mask_ids"], tf.int32), -1)
    return {"token_ids": tf.cast(m["token_ids"], tf.int32),
            "mask_positions": tf.cast(m["mask_positions"], tf.int32)}, y
def stream(x, shuffle):
    ds = tf.data.Dataset.from_tensor_slices(x)
    ds = ds.shuffle(len(x), seed=0) if shuffle else ds
    return ds.batch(64).map(prep).prefetch(2)
model = build_masked_lm(transformer((length,), b), cfg.pretext, b, 0)
t = time.perf_counter()
h = model.fit(stream(texts, True), validation_data=stream(val, False), epochs=epochs,
              verbose=0)
print(json.dumps({"fit_s": time.perf_counter() - t,
                  "val_perplexity": float(h.history["val_perplexity"][-1])}))
"""


def _texts(args, tmp: Path):
    """The folder of texts, or None for the bundled fortunes (`text_mlm`'s own data)."""
    if args.texts:
        return Path(args.texts)
    if FORTUNES.is_dir() and not args.smoke:
        out = tmp / "fortunes"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "fortune_folders.py"), str(out)],
                       check=True, capture_output=True)
        return out
    return None


def _pretrainer(args, texts: Path, tmp: Path, i: int) -> dict:
    runs = tmp / f"runs{i}"
    data = (["data=text_files", f"data.path='{texts}'", "data.text_split=line"] if texts
            else [])
    cmd = [sys.executable, "-m", "pretrainer", "pretrain", "-c", "text_mlm", *data,
           f"paths.data={tmp / 'data'}", f"paths.runs={runs}", f"trainer.epochs={args.epochs}",
           "trainer.verbose=false", *(["data.max_samples=600"] if args.smoke else [])]
    subprocess.run(cmd, check=True, capture_output=True, cwd=tmp)
    (run,) = list(runs.glob("*/pretrain-*"))
    m = json.loads((run / "manifest.json").read_text())
    (perplexity,) = m["health"].values()
    return {"fit_s": m["fit_seconds"], "val_perplexity": perplexity, "run": run,
            "length": m["sequence_length"] or 64}


def _plain(args, tmp: Path, run: dict) -> dict:
    (store,) = [p for p in (tmp / "data").iterdir() if (p / "manifest.json").is_file()]
    out = subprocess.run([sys.executable, "-c", PLAIN, str(store), str(run["run"] / "vocab.txt"),
                          str(run["length"]), str(args.epochs)],
                         check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", help="a folder of text files, one text per line")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="600 bundled texts, 1 round")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "mlm_epochs.json"))
    args = ap.parse_args()
    if args.smoke:
        args.epochs, args.rounds = 1, 1
    from pretrainer.precision import cpu_name

    rounds = {"plain": [], "pretrainer": []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        texts = _texts(args, tmp)
        for i in range(args.rounds):  # alternating, pretrainer first (it writes the store)
            t = time.perf_counter()
            ours = _pretrainer(args, texts, tmp, i)
            rounds["pretrainer"].append(ours)
            rounds["plain"].append(_plain(args, tmp, ours))
            print(f"round {i + 1}: pretrainer {ours['fit_s']:.1f} s, plain "
                  f"{rounds['plain'][-1]['fit_s']:.1f} s ({time.perf_counter() - t:.0f} s)",
                  flush=True)
        pool = json.loads(next((tmp / "data").glob("*/manifest.json")).read_text())
    med = {k: statistics.median(r["fit_s"] for r in v) for k, v in rounds.items()}
    ppl = {k: statistics.median(r["val_perplexity"] for r in v) for k, v in rounds.items()}
    n = pool["splits"]["unlabeled"]["count"]
    result = {"cpu": cpu_name(), "cores": os.cpu_count(), "texts": str(texts or "bundled"),
              "pool": n,
              "epochs": args.epochs, "sequence_length": rounds["pretrainer"][0]["length"],
              "fit_s": med, "val_perplexity": ppl, "speedup": med["plain"] / med["pretrainer"],
              "rounds": {k: [r["fit_s"] for r in v] for k, v in rounds.items()},
              "smoke": args.smoke}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nMLM pretraining on {n:,} texts ({args.epochs} epochs, sequence length "
          f"{result['sequence_length']}), {cpu_name()}\n")
    print("| side | fit s (median) | s per epoch | val perplexity |")
    print("|---|---|---|---|")
    for k in ("plain", "pretrainer"):
        print(f"| {k} | {med[k]:.1f} | {med[k] / args.epochs:.1f} | {ppl[k]:.1f} |")
    print(f"\nplain / pretrainer: {result['speedup']:.2f}x (before issue 29: 71-90 s per "
          "epoch on ~27k short lines at 64 tokens, 37-43 s at 32)")


if __name__ == "__main__":
    main()
