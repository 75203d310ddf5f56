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
    classical = None
    if cfg.study.classical:  # the strongest simple baseline on the same labels and test split
        from pretrainer import baselines
        from pretrainer.data.store import read_manifest

        store = collect.store_path(cfg)
        classical = baselines.fit_and_score(Path(store), read_manifest(store))
        classical["dir"] = baselines.save(classical, Path(results["pretrained"]["evaluate"])
                                          / "classical")
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
    if classical is not None:
        rows.append([f"classical: {classical['name']}", m["labels"],
                     *([f"{classical['mse']:.4g}", ""] if regression
                       else [f"{classical['accuracy']:.2%}", ""]), ""])
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
    versus = None
    if classical is not None:
        versus = paired_bootstrap(evaluate.example_scores(results["pretrained"]["evaluate"]),
                                  evaluate.example_scores(classical["dir"]))
        if regression:
            console.print(f"pretrained - classical test MSE: {-versus['mean']:+.4g} (95% CI "
                          f"{-versus['high']:+.4g} to {-versus['low']:+.4g})", soft_wrap=True)
        else:
            console.print(f"pretrained - classical ({classical['name']}) test accuracy: "
                          f"{verdict(versus)}", soft_wrap=True)
    console.print(f"exported model: [bold]{esc(export)}[/bold]  ({wall:.0f} s)")
    out = {"pretrain": pre, "results": results, "deploy": dep, "export": export,
           "wall_s": wall, "gain_points": gain, "gain_interval": ci}
    if classical is not None:
        out["classical"] = {k: v for k, v in classical.items() if k not in ("y_true", "y_pred")}
        out["classical_interval"] = versus
    return out
