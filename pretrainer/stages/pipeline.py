"""pipeline: collect -> pretrain -> finetune (pretrained and the baselines) -> evaluate ->
choose the arm that wins on the validation split -> deploy it.

The baselines are what a practitioner tries first: the same finetuning recipe from
scratch (the same architecture, labels and budget, random initial weights), the same
architecture on the labels alone when the recipe also learns from the unlabeled pool,
and the classical model (pretrainer.baselines). The frozen-feature arms
(pretrainer.frozen) show in seconds what the pretrained embedding alone is worth.
The arm with the best validation score is deployed and marked as the experiment's
model (runs.mark_model), so predict, evaluate, deploy and serve use it by default.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Optional

from pretrainer import runs, scoring
from pretrainer.config import Config, to_yaml
from pretrainer.console import console, esc, info, table
from pretrainer.data.records import StoreManifest
from pretrainer.data.store import store_path
from pretrainer.stages import collect, deploy, evaluate, finetune, pretrain
from pretrainer.stats import paired_bootstrap, verdict


def _deep_arms(cfg: Config) -> list[tuple[str, Config]]:
    """(arm, config) of each finetune: pretrained, scratch and, for a recipe that uses the
    unlabeled pool, labels only."""
    arms = []
    for arm in ("pretrained", "scratch", "labels only"):
        c = copy.deepcopy(cfg)
        if arm != "pretrained":
            c.finetune.init, c.finetune.prior = "scratch", "none"
        if arm == "labels only":
            if cfg.finetune.semi_supervised == "none":
                continue  # scratch already is labels only
            c.finetune.semi_supervised = "none"
        arms.append((arm, c))
    return arms


def _val_score(ft_run: Path, regression: bool) -> Optional[float]:
    """The finetune run's validation score at the epoch it kept (higher is better)."""
    final = runs.read_manifest(ft_run).final_metrics
    key = "val_loss" if regression else "val_accuracy"
    return None if key not in final else (-final[key] if regression else final[key])


def run(cfg: Config) -> dict:
    from pretrainer.data.store import read_manifest

    t0 = time.perf_counter()
    collect.run(cfg)
    pre = pretrain.run(cfg)
    store = store_path(cfg)
    manifest = read_manifest(store)
    regression = manifest.regression
    has_val = manifest.count("val") > 0
    results = {}
    for arm, c in _deep_arms(cfg):
        ft = finetune.run(c, run=pre if arm == "pretrained" else None)
        ev = evaluate.run(c, run=ft)
        results[arm] = {"finetune": ft, "evaluate": ev, "val": _val_score(ft, regression),
                        "metrics": json.loads((ev / "metrics.json").read_text())}
    where = Path(results["pretrained"]["evaluate"])
    frozen = [] if regression else _frozen_arms(cfg, pre, store, manifest, where)
    classical = None
    if cfg.study.classical:  # the strongest simple baseline on the same labels and test split
        from pretrainer import baselines

        classical = baselines.fit_and_score(Path(store), manifest)
        classical["dir"] = baselines.save(classical, where / "classical")
        val = classical.get("val_score")
        classical["val"] = None if val is None else (-val if regression else val)
    winner, why = _choose(results, classical, has_val, regression,
                          exportable=manifest.kind.classical_exact)
    if winner == "classical":
        ft = _classical_run(cfg, classical, store, manifest)
        results["classical"] = {"finetune": ft, "evaluate": evaluate.run(cfg, run=ft),
                                "val": classical["val"]}
    chosen = results[winner]["finetune"]
    dep = deploy.run(cfg, run=chosen)
    export = runs.read_manifest(dep).export
    runs.mark_model(cfg.paths.runs, cfg.experiment, arm=winner, why=why, finetune=chosen,
                    deploy=dep, pretrain=pre,
                    val={a: r["val"] for a, r in results.items()})
    wall = time.perf_counter() - t0
    _print_table(cfg, results, frozen, classical, winner, regression)
    intervals = _print_intervals(results, classical, regression)
    _print_meaning(results, classical, winner, why, intervals, regression)
    console.print(f"exported model ({winner} arm): [bold]{esc(export)}[/bold]  ({wall:.0f} s)")
    gain = intervals.get("scratch")
    out = {"pretrain": pre, "results": results, "deploy": dep, "export": export,
           "wall_s": wall, "winner": winner, "why": why,
           "gain_points": None if gain is None else (-gain["mean"] if regression
                                                     else gain["mean"] * 100),
           "gain_interval": gain, "intervals": intervals,
           "frozen": [{k: v for k, v in f.items() if k not in ("y_true", "y_pred")}
                      for f in frozen]}
    if classical is not None:
        out["classical"] = {k: v for k, v in classical.items()
                            if k not in ("y_true", "y_pred", "estimator")}
        out["classical_interval"] = intervals.get("classical")
    return out


def _frozen_arms(cfg: Config, pre: Path, store, manifest: StoreManifest,
                 where: Path) -> list[dict]:
    """kNN, logistic regression and label spreading on the pretrained embedding (or the
    layer the prior is built on), each saved beside the pretrained arm's evaluation
    (predictions.npz, metrics.json)."""
    from pretrainer import baselines, frozen
    from pretrainer.stages.embed import featurizer, frozen_layer

    t0 = time.perf_counter()
    layer = frozen_layer(cfg, manifest)
    feats = frozen.store_features(featurizer(pre, manifest, layer), store)
    out = frozen.score(feats, manifest.num_classes, features=layer)
    for r in out:
        r["dir"] = baselines.save(r, where / f"frozen_{r['arm']}")
        r["features"] = frozen.feature_name(layer)
    shown = ", ".join(f"{r['arm']} {r['accuracy']:.2%}" for r in out)
    info(f"  frozen-feature arms: {shown} ({time.perf_counter() - t0:.1f} s)")
    return out


def _choose(results: dict, classical: Optional[dict], has_val: bool, regression: bool,
            exportable: bool) -> tuple[str, str]:
    """(winning arm, why): the best validation score among the deep arms and the classical
    model where it has a Keras form (`exportable`: images and text; gradient boosting on
    tables has none); the pretrained arm when there is no val split."""
    if not has_val:
        return "pretrained", "no val split to choose on"
    scores = {arm: r["val"] for arm, r in results.items() if r["val"] is not None}
    if exportable and classical is not None and classical.get("val") is not None and \
            classical.get("estimator") is not None:
        scores["classical"] = classical["val"]
    if not scores:
        return "pretrained", "no validation scores"
    # ties go to the arm listed first (pretrained, then scratch, ...)
    best = max(scores, key=lambda a: (scores[a], -list(scores).index(a)))
    return best, f"best {_shown(scores[best], regression)} of {len(scores)} arms"


def _classical_run(cfg: Config, classical: dict, store, manifest: StoreManifest) -> Path:
    """The classical model (logistic regression on pixels, or TF-IDF + logistic
    regression on text) as a finetune run with a model.keras, so deploy, evaluate,
    predict and serve take it like any other."""
    from pretrainer import baselines
    from pretrainer.data.store import MANIFEST, join
    from pretrainer.stages import save_artifact

    model = baselines.keras_model(classical, manifest)
    with runs.opened(cfg.paths.runs, cfg.experiment, "finetune", to_yaml(cfg),
                     dataset_manifest=join(store, MANIFEST),
                     extra={"init": "classical", "mode": classical["name"],
                            "labels": manifest.count("train"),
                            "seed": cfg.seed, "semi_supervised": "none"}) as opened:
        save_artifact(opened.path, "model.keras", model)
        runs.update_manifest(opened.path, final_metrics={"val_accuracy": classical["val"]},
                             kept={"rule": f"scikit-learn {classical['chosen']}"})
    info(f"[green]classical model as Keras[/green]: {esc(opened.path / 'model.keras')}")
    return opened.path



def _print_table(cfg: Config, results: dict, frozen: list[dict], classical: Optional[dict],
                 winner: str, regression: bool) -> None:
    rows = []
    m = results["pretrained"]["metrics"]
    for arm, r in results.items():
        if arm == "classical":
            continue
        mm = r["metrics"]
        val = "" if r["val"] is None else (f"{-r['val']:.4g}" if regression
                                           else f"{r['val']:.2%}")
        scores = ([f"{mm['mse']:.4g}", f"{mm['r2']:.4f}"] if regression
                  else [f"{mm['accuracy']:.2%}", f"{mm['f1_macro']:.4f}"])
        rows.append([arm + (" ✓" if arm == winner else ""), str(mm["labels"]), val, *scores,
                     str(Path(r["finetune"]).name)])
    for f in frozen:
        rows.append([f"frozen {f['arm']}", str(m["labels"]), "", f"{f['accuracy']:.2%}", "",
                     f"pretrained {f['features']}, {f['chosen']}"])
    if classical is not None:
        val = "" if classical.get("val") is None else (
            f"{-classical['val']:.4g}" if regression else f"{classical['val']:.2%}")
        score = f"{classical['mse']:.4g}" if regression else f"{classical['accuracy']:.2%}"
        run = (str(Path(results["classical"]["finetune"]).name) if "classical" in results
               else "")
        setting = run or f"{classical['name']}, {classical['chosen']}".rstrip(", ")
        rows.append([f"classical{' ✓' if winner == 'classical' else ''}", str(m["labels"]),
                     val, score, "", setting])
    columns = ["val MSE", "test MSE", "R²"] if regression else [
        "val accuracy", "test accuracy", "macro F1"]
    console.print(table(f"{cfg.experiment}: pretrained backbone vs baselines, same labels "
                        f"({m['samples']} test examples; ✓ = best on val, deployed)",
                        ["arm", "labels", *columns, "run / setting"], rows))


def _print_intervals(results: dict, classical: Optional[dict], regression: bool) -> dict:
    """pretrained minus each baseline on the test split, paired bootstrap 95 % intervals."""
    mine = scoring.example_scores(results["pretrained"]["evaluate"])
    bases = [(arm, results[arm]["evaluate"]) for arm in ("scratch", "labels only")
             if arm in results]
    if classical is not None:
        bases.append(("classical", classical["dir"]))
    out = {}
    for arm, where in bases:
        ci = paired_bootstrap(mine, scoring.example_scores(Path(where)))
        out[arm] = ci
        what = f"pretrained - {arm}" + (f" ({classical['name']})" if arm == "classical" else "")
        if regression:
            console.print(f"{what} test MSE: {-ci['mean']:+.4g} (95% CI {-ci['high']:+.4g} "
                          f"to {-ci['low']:+.4g}, {ci['method']})"
                          + (": within noise" if ci["low"] <= 0 <= ci["high"] else ""),
                          soft_wrap=True)
        else:
            console.print(f"{what} test accuracy: {verdict(ci)}", soft_wrap=True)
    return out


def _print_meaning(results: dict, classical: Optional[dict], winner: str, why: str,
                   intervals: dict, regression: bool) -> None:
    """One line for a newcomer: did the unlabeled data pay, and what ships."""
    beaten = [a for a, ci in intervals.items() if ci["low"] > 0]
    lost = [a for a, ci in intervals.items() if ci["high"] < 0]
    if len(beaten) == len(intervals):
        verdict_text = "pretraining paid: the pretrained model beats every baseline beyond noise"
    elif lost:
        verdict_text = (f"pretraining did not pay here: {', '.join(lost)} "
                        f"{'is' if len(lost) == 1 else 'are'} better on the test split")
    elif beaten:
        verdict_text = (f"pretraining beats {', '.join(beaten)} beyond noise; the other "
                        f"differences are within noise")
    else:
        verdict_text = "no difference to the baselines beyond noise"
    note = ""
    best_val = results[winner]["val"]
    if (classical is not None and winner != "classical" and classical.get("val") is not None
            and best_val is not None and classical["val"] > best_val):
        note = (f" The classical model ({classical['name']}) scored higher on val "
                f"({_shown(classical['val'], regression)}) but has no Keras form for this data, "
                f"so it is not deployed.")
    console.print(f"what this means: {verdict_text}. The {winner} arm ({why}) is deployed and is "
                  f"the experiment's model: predict, evaluate and serve use it.{note}",
                  soft_wrap=True)


def _shown(val: float, regression: bool) -> str:
    return f"val MSE {-val:.4g}" if regression else f"val accuracy {val:.2%}"
