"""pipeline: collect -> pretrain -> finetune (pretrained and scratch) -> evaluate -> deploy.

The scratch run is the baseline the method must beat: the same architecture,
the same labels, the same budget, random initial weights.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from pretrainer import runs
from pretrainer.config import Config
from pretrainer.console import console, table
from pretrainer.stages import collect, deploy, evaluate, finetune, pretrain


def run(cfg: Config) -> dict:
    t0 = time.perf_counter()
    collect.run(cfg)
    pre = pretrain.run(cfg)
    results = {}
    for init in ("pretrained", "scratch"):
        c = copy.deepcopy(cfg)
        c.finetune.init = init
        ft = finetune.run(c, run=pre if init == "pretrained" else None)
        ev = evaluate.run(c, run=ft)
        results[init] = {"finetune": ft, "evaluate": ev,
                         "metrics": json.loads((ev / "metrics.json").read_text())}
    dep = deploy.run(cfg, run=results["pretrained"]["finetune"])
    export = runs.read_manifest(dep)["export"]
    wall = time.perf_counter() - t0
    rows = []
    for init, r in results.items():
        m = r["metrics"]
        rows.append([init, m["labels"], f"{m['accuracy']:.2%}", f"{m['f1_macro']:.4f}",
                     str(Path(r["finetune"]).name)])
    console.print(table(f"{cfg.experiment}: pretrained backbone vs scratch, same labels "
                        f"({m['samples']} test examples)",
                        ["init", "labels", "test accuracy", "macro F1", "finetune run"], rows))
    gain = (results["pretrained"]["metrics"]["accuracy"]
            - results["scratch"]["metrics"]["accuracy"]) * 100
    console.print(f"pretraining {'gained' if gain >= 0 else 'lost'} {abs(gain):.1f} accuracy "
                  f"points; exported model: [bold]{export}[/bold]  ({wall:.0f} s)")
    return {"pretrain": pre, "results": results, "deploy": dep, "export": export,
            "wall_s": wall, "gain_points": gain}
