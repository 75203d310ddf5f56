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
from pretrainer.console import console, esc, table
from pretrainer.stages import collect, deploy, evaluate, finetune, pretrain
from pretrainer.stats import paired_bootstrap, verdict


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
    regression = "mse" in results["scratch"]["metrics"]
    rows = []
    for init, r in results.items():
        m = r["metrics"]
        scores = ([f"{m['mse']:.4g}", f"{m['r2']:.4f}"] if regression
                  else [f"{m['accuracy']:.2%}", f"{m['f1_macro']:.4f}"])
        rows.append([init, m["labels"], *scores, str(Path(r["finetune"]).name)])
    columns = ["test MSE", "R²"] if regression else ["test accuracy", "macro F1"]
    console.print(table(f"{cfg.experiment}: pretrained backbone vs scratch, same labels "
                        f"({m['samples']} test examples)",
                        ["init", "labels", *columns, "finetune run"], rows))
    # paired bootstrap over the test examples both models were scored on
    ci = paired_bootstrap(evaluate.example_scores(results["pretrained"]["evaluate"]),
                          evaluate.example_scores(results["scratch"]["evaluate"]))
    if regression:
        gain = -ci["mean"]  # mean squared error lowered by pretraining
        console.print(f"pretraining changed the test MSE by {-ci['mean']:+.4g} (95% CI "
                      f"{-ci['high']:+.4g} to {-ci['low']:+.4g}, {ci['method']})"
                      + (": within noise" if ci["low"] <= 0 <= ci["high"] else ""), soft_wrap=True)
    else:
        gain = ci["mean"] * 100
        console.print(f"pretrained - scratch test accuracy: {verdict(ci)}", soft_wrap=True)
    console.print(f"exported model: [bold]{esc(export)}[/bold]  ({wall:.0f} s)")
    return {"pretrain": pre, "results": results, "deploy": dep, "export": export,
            "wall_s": wall, "gain_points": gain, "gain_interval": ci}
