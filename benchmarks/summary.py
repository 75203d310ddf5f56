"""The performance tables per size, from the JSON the other benchmarks wrote.

    python benchmarks/summary.py [--dir benchmarks]

`make bench` runs it last; docs/benchmarks.md's per-size section is this output. A table
whose benchmark has not run (or ran only as --smoke) is left out with a line saying so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load(folder: Path, name: str) -> dict | None:
    path = folder / name
    if not path.is_file():
        print(f"({name}: not measured; run its benchmark)")
        return None
    data = json.loads(path.read_text())
    if data.get("smoke") or data.get("_meta", {}).get("smoke"):
        print(f"({name}: only a --smoke run, not a measurement)")
        return None
    return data


def training_table(small: dict | None, large: dict | None) -> list[str]:
    """The seed CNN trained by the seed's few lines and by `pretrainer finetune`, a row
    per size: whole seconds, speed ratio (seed / pretrainer) and test accuracy."""
    lines = ["| data x epochs (batch 64) | seed recipe, float32 | pretrainer, float32 | "
             "pretrainer, mixed_bfloat16 (auto's pick on AMX) | test accuracy seed / f32 / bf16 | "
             "measured on |",
             "|---|---|---|---|---|---|"]
    if small and "seed_recipe_bf16" in small:
        f32, bf16 = small["seed_recipe"], small["seed_recipe_bf16"]
        lines.append(
            f"| {f32.get('data', '?')}, {f32.get('images', 0):,} images x {f32.get('epochs', '?')} "
            f"(in one process) | {f32['baseline_s']:.1f} s | "
            f"{f32['candidate_s']:.1f} s ({f32['speedup']:.2f}x) | {bf16['candidate_s']:.1f} s "
            f"({bf16['speedup']:.2f}x) | {100 * f32['test_accuracy_seed']:.1f} / "
            f"{100 * f32['test_accuracy_pretrainer']:.1f} / "
            f"{100 * bf16['test_accuracy_pretrainer']:.1f} % | {_cpu(small.get('_meta', {}))} |")
    if large:
        rows = large["rows"]
        seed = rows["seed"]["wall_s"]
        lines.append(
            f"| full Fashion-MNIST, {large['images']:,} images x {large['epochs']} (whole "
            f"process) | {seed:.1f} s | {rows['float32']['wall_s']:.1f} s "
            f"({seed / rows['float32']['wall_s']:.2f}x) | {rows['auto']['wall_s']:.1f} s "
            f"({seed / rows['auto']['wall_s']:.2f}x) | "
            f"{100 * rows['seed']['test_accuracy']:.1f} / "
            f"{100 * rows['float32']['test_accuracy']:.1f} / "
            f"{100 * rows['auto']['test_accuracy']:.1f} % | {_cpu(large)} |")
    return lines


def _cpu(result: dict) -> str:
    """The CPU (name, cores, bf16 units) a result was measured on; results written before
    the benchmarks recorded it say so."""
    return result.get("cpu") or "(not recorded)"


def memory_table(scale: dict | None) -> list[str]:
    lines = ["| images | data cached (default) | streamed (data.cache=false) | measured on |",
             "|---|---|---|---|"]
    if scale:
        for r in scale["rows"]:
            lines.append(f"| {r['images']:,} | {r['cached']:.0f} MiB | {r['streamed']:.0f} MiB | "
                         f"{_cpu(scale)} |")
        lines.append(f"| {scale['factor']}x / 1x | {scale['ratio_cached']:.2f} | "
                     f"{scale['ratio_streamed']:.2f} | |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=ROOT / "benchmarks")
    args = ap.parse_args()
    small = _load(args.dir, "results.json")
    large = _load(args.dir, "seed_at_size.json")
    scale = _load(args.dir, "memory_scale.json")
    from pretrainer.precision import cpu_name

    print(f"\nThis machine: {cpu_name()} (each row says the machine it was measured on)")
    print("\nTraining the seed CNN, per size (ratio: seed seconds / pretrainer seconds)\n")
    print("\n".join(training_table(small, large)))
    if large:
        print(f"\n(default precision here: {large.get('auto_policy', '?')})")
    print("\nPeak RSS of `pretrainer pretrain -c fashion_ae`, one epoch, per size\n")
    print("\n".join(memory_table(scale)))


if __name__ == "__main__":
    main()
