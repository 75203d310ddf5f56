"""study: does pretraining help on my data? Pretrained vs scratch across label fractions.

Pretrain once (or reuse --run), then for every labeled fraction and seed finetune
the pretrained backbone and the same architecture from scratch with identical
budgets (and, when asked, a linear probe), evaluate each on the same test split,
and write study.json, study.md and a label-efficiency plot. The test split, the
validation split and the pretraining pool are the same in every cell; only the
labeled subset is redrawn per seed (data.label_seed). A killed study run again
with the same command skips the cells it finished.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Optional

import numpy as np

from pretrainer import files, runs, scoring
from pretrainer.config import Config, to_yaml
from pretrainer.console import console, esc, info, table
from pretrainer.data.store import store_path, store_seed
from pretrainer.stages import collect, evaluate, finetune, pretrain


def _arms(cfg: Config) -> list[tuple[str, str, str, str]]:
    """(arm name, finetune.init, finetune.mode, finetune.semi_supervised).

    pretrained and scratch share the experiment's finetune recipe, semi-supervised
    use of the unlabeled pool included, so their gap is what pretraining adds. With
    a semi-supervised recipe, `scratch_labels_only` is also trained: the same
    architecture on the labeled split alone, i.e. without any unlabeled data.
    """
    semi = cfg.finetune.semi_supervised
    arms = [("pretrained", "pretrained", cfg.finetune.mode, semi),
            ("scratch", "scratch", "full", semi)]
    if semi != "none":
        arms.append(("scratch_labels_only", "scratch", "full", "none"))
    if cfg.study.linear_probe:
        arms.append(("linear_probe", "pretrained", "linear_probe", "none"))
    return arms


def run(cfg: Config, pretrain_run: Optional[str] = None) -> Path:
    """Every cell (label budget x seed x arm), then the summary; a rerun of the same
    command continues a killed study from its study.json (the cells finished so far)."""
    with runs.opened(cfg.paths.runs, cfg.experiment, "study", to_yaml(cfg),
                     progress="study.json") as opened:
        out = opened.path
        state = (json.loads((out / "study.json").read_text()) if opened.resumed
                 else {"cells": []})
        summary, comparisons = _study(cfg, out, state, pretrain_run)
    metric = _metric(summary)
    rows = [[f"{s['fraction']:g}", str(s["labels"]), s["arm"],
             _pm(s), str(s["n"])] for s in summary]
    console.print(table(f"study: test {metric} by labeled fraction", ["fraction", "labels",
                        "init", f"{metric} (mean ± std)", "seeds"], rows))
    for c in comparisons:
        what = c["arm"] if " - " in c["arm"] else f"{c['arm']} - scratch"
        info(f"  {c['fraction']:g}: {esc(what)}: {esc(c['verdict'])}")
    info(f"[green]study done[/green]: {esc(out / 'study.md')}")
    return out


def _study(cfg: Config, out: Path, state: dict, pretrain_run: Optional[str]
           ) -> tuple[list[dict], list[dict]]:
    """Run the cells `state` lacks, writing study.json after each; (summary, comparisons)."""
    # data.labels_per_class, when given, is the one label budget studied (per class)
    per_class = cfg.data.labels_per_class
    levels = [per_class] if per_class is not None else list(cfg.study.fractions)
    budget = (f"{per_class} label(s) per class" if per_class is not None
              else f"{len(levels)} fraction(s)")
    info(f"[bold]study[/bold]: {budget} x {cfg.study.seeds} seed(s) -> {esc(out)}")
    collect.run(cfg)
    pre = (runs.require_done(pretrain_run, "pretrain") if pretrain_run
           else (Path(state["pretrain_run"]) if state.get("pretrain_run") else pretrain.run(cfg)))
    state["pretrain_run"] = str(pre)
    files.atomic_write_json(out / "study.json", state)  # a rerun reuses this pretrain run
    finished = {(c["fraction"], c["seed"], c["arm"]) for c in state["cells"]}
    if finished:
        info(f"  resuming: {len(finished)} finished cell(s) are kept")
    base_store = store_path(cfg)
    from pretrainer.frozen import ARMS as frozen_arms

    shared: dict = {}  # the pretrained featurizer; pool, val and test features (every cell)
    for fraction in levels:
        for seed in range(cfg.study.seeds):
            for arm, init, mode, semi in _arms(cfg):
                if (fraction, seed, arm) in finished:
                    continue
                c = _cell(cfg, fraction, seed, out)
                c.finetune.init, c.finetune.mode = init, mode
                c.finetune.semi_supervised = semi
                if init != "pretrained" or semi == "none":  # the prior is pretrained features
                    c.finetune.prior = "none"
                collect.run(c, share_from=base_store)  # pool, val, test: links, not copies
                ft = finetune.run(c, run=pre if init == "pretrained" else None)
                ev = evaluate.run(c, run=ft)
                metrics = json.loads((ev / "metrics.json").read_text())
                state["cells"].append({
                    "fraction": fraction, "seed": seed, "arm": arm, "labels": metrics["labels"],
                    "accuracy": metrics.get("accuracy"), "f1_macro": metrics.get("f1_macro"),
                    "mse": metrics.get("mse"), "finetune_run": str(ft),
                    "evaluate_run": str(ev)})
                files.atomic_write_json(out / "study.json", state)  # a kill keeps every cell so far
            if cfg.study.frozen and not all((fraction, seed, f"frozen_{a}") in finished
                                            for a in frozen_arms):
                c = _cell(cfg, fraction, seed, out)
                collect.run(c, share_from=base_store)
                state["cells"] += _frozen_cells(c, pre, fraction, seed, out, shared)
                files.atomic_write_json(out / "study.json", state)
            if cfg.study.classical and (fraction, seed, "classical") not in finished:
                c = _cell(cfg, fraction, seed, out)
                collect.run(c, share_from=base_store)
                state["cells"].append(_classical_cell(c, fraction, seed, out))
                files.atomic_write_json(out / "study.json", state)
    summary = summarise(state["cells"])
    state["summary"] = summary
    state["comparisons"] = comparisons = compare(state["cells"])
    files.atomic_write_json(out / "study.json", state)
    _plot(summary, out / "label_efficiency.png")
    files.atomic_write_text(out / "study.md", _markdown(cfg, pre, summary, comparisons))
    return summary, comparisons


def _cell(cfg: Config, fraction, seed: int, out: Path) -> Config:
    """The config of one cell: its labeled draw; the study's test, val and pool."""
    c = copy.deepcopy(cfg)
    per_class = cfg.data.labels_per_class
    if per_class is not None:
        c.data.labels_per_class = per_class
        c.data.name = f"{cfg.data.name}-study-{per_class}pc-s{seed}"
    else:
        c.data.labeled_fraction, c.data.labels_per_class = fraction, None
        c.data.name = f"{cfg.data.name}-study-f{fraction:g}-s{seed}"
    c.data.label_seed = cfg.seed + 1000 * seed
    # the same test, val and pool in every cell: only the labeled draw moves
    c.data.split_seed = store_seed(cfg)
    c.seed = cfg.seed + seed
    # cells live inside the study's directory: `latest run` lookups (deploy, evaluate)
    # never pick a study cell
    c.experiment = f"{cfg.experiment}/{out.name}"
    return c


def _classical_cell(c: Config, fraction, seed: int, out: Path) -> dict:
    """The classical baseline (pretrainer.baselines) on the cell's labeled split, scored
    on the same test split as the deep arms."""
    from pretrainer import baselines
    from pretrainer.data.store import read_manifest

    store = store_path(c)
    manifest = read_manifest(store)
    result = baselines.fit_and_score(Path(store), manifest)
    where = baselines.save(result, out / "classical" / f"f{fraction:g}-s{seed}")
    labels = manifest.count("train")
    info(f"  classical ({esc(result['name'])}): {_score(result)} in {result['seconds']:.1f} s")
    return {"fraction": fraction, "seed": seed, "arm": "classical", "labels": labels,
            "accuracy": result.get("accuracy"), "f1_macro": None, "mse": result.get("mse"),
            "model": result["name"], "evaluate_run": str(where)}


def _frozen_cells(c: Config, pre: Path, fraction, seed: int, out: Path,
                  shared: dict) -> list[dict]:
    """The frozen-feature arms (pretrainer.frozen) on the cell's labels: seconds each."""
    from pretrainer import baselines, frozen
    from pretrainer.data.store import read_manifest
    from pretrainer.stages.embed import featurizer, frozen_layer

    store = store_path(c)
    manifest = read_manifest(store)
    if manifest.regression:
        return []
    if not shared:  # the backbone and the val, test and pool features: once per study
        featurize = featurizer(pre, manifest, frozen_layer(c, manifest))
        shared.update(featurize=featurize, feats={
            split: frozen.split_features(featurize, store, split, limit=frozen.POOL_MAX
                                         if split == "unlabeled" else None)
            for split in ("val", "test", "unlabeled")})
    feats = {**shared["feats"],
             "train": frozen.split_features(shared["featurize"], store, "train")}
    cells = []
    for r in frozen.score(feats, manifest.num_classes, features=frozen_layer(c, manifest)):
        where = baselines.save(r, out / f"frozen_{r['arm']}" / f"f{fraction:g}-s{seed}")
        info(f"  frozen {r['arm']} ({esc(r['chosen'])}): {_score(r)} in {r['seconds']:.1f} s")
        cells.append({"fraction": fraction, "seed": seed, "arm": f"frozen_{r['arm']}",
                      "labels": manifest.count("train"),
                      "accuracy": r["accuracy"], "f1_macro": None, "mse": None,
                      "model": r["name"], "evaluate_run": str(where)})
    return cells


def _score(result: dict) -> str:
    return (f"test accuracy {result['accuracy']:.4f}" if "accuracy" in result
            else f"test MSE {result['mse']:.4g}")


def compare(cells: list[dict]) -> list[dict]:
    """Each arm minus `scratch` per labeled fraction (and pretrained minus the classical
    baseline), each with a 95% interval (_versus)."""
    metric = "accuracy" if cells and cells[0].get("accuracy") is not None else "mse"
    sign = 1.0 if metric == "accuracy" else -1.0  # a positive difference is always better
    by = {(c["fraction"], c["arm"], c["seed"]): c for c in cells}
    out = []
    for fraction, arm in dict.fromkeys((c["fraction"], c["arm"]) for c in cells):
        if arm == "classical":  # the question there: does pretrained beat it?
            out += _versus(by, fraction, "pretrained", "classical", metric, sign,
                           label="pretrained - classical")
        elif arm != "scratch":
            out += _versus(by, fraction, arm, "scratch", metric, sign, label=arm)
        if arm == "scratch_labels_only":  # what pretraining and the pool add together
            out += _versus(by, fraction, "pretrained", arm, metric, sign,
                           label="pretrained - scratch_labels_only")
    return out


def _versus(by: dict, fraction, arm: str, base: str, metric: str, sign: float,
            label: str) -> list[dict]:
    """`arm` minus `base` at one fraction with a 95% interval: over the seeds (t) when
    there are several, else a paired bootstrap over the shared test examples."""
    from pretrainer.stats import paired_bootstrap, seed_interval, verdict

    pairs = [(by[(fraction, arm, s)], by[(fraction, base, s)])
             for f, a, s in by if f == fraction and a == arm and (fraction, base, s) in by]
    if not pairs:
        return []
    ci = seed_interval([sign * (a[metric] - b[metric]) for a, b in pairs])
    if ci is None and all(a.get("evaluate_run") and b.get("evaluate_run") for a, b in pairs):
        a, b = pairs[0]
        ci = paired_bootstrap(scoring.example_scores(Path(a["evaluate_run"])),
                              scoring.example_scores(Path(b["evaluate_run"])))
    if ci is None:
        return []
    scale, unit = (100.0, "points") if metric == "accuracy" else (1.0, "MSE (lower is better)")
    return [{"fraction": fraction, "arm": label, "metric": metric, **ci,
             "verdict": verdict(ci, scale, unit)}]


def _pm(s: dict) -> str:
    """mean ± std over seeds; one seed has no spread to show (not '± 0.0000')."""
    return f"{s['mean']:.4f} ± {s['std']:.4f}" if s["n"] > 1 else f"{s['mean']:.4f} (1 seed)"


def _metric(summary_or_cells) -> str:
    first = summary_or_cells[0]
    return first.get("metric") or ("accuracy" if first.get("accuracy") is not None else "mse")


def summarise(cells: list[dict]) -> list[dict]:
    """Mean and std over seeds per (fraction, arm)."""
    metric = "accuracy" if cells and cells[0].get("accuracy") is not None else "mse"
    groups: dict = {}
    for c in cells:
        groups.setdefault((c["fraction"], c["arm"]), []).append(c)
    out = []
    for (fraction, arm), cs in sorted(groups.items()):
        vals = np.array([c[metric] for c in cs], np.float64)
        out.append({"fraction": fraction, "arm": arm, "labels": int(np.mean([c["labels"]
                                                                            for c in cs])),
                    "metric": metric, "mean": float(vals.mean()), "std": float(vals.std()),
                    "n": len(cs)})
    return out


def _plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in dict.fromkeys(s["arm"] for s in summary):
        pts = [s for s in summary if s["arm"] == arm]
        ax.errorbar([s["labels"] for s in pts], [s["mean"] for s in pts],
                    yerr=[s["std"] for s in pts], marker="o", capsize=3, label=arm)
    ax.set_xscale("log")
    ax.set_xlabel("labeled examples")
    ax.set_ylabel(f"test {summary[0]['metric']}")
    ax.set_title("label efficiency (mean ± std over seeds)")
    ax.legend()
    fig.tight_layout()
    files.atomic_write_with(path, lambda p: fig.savefig(p, format="png", dpi=100), suffix=".png")
    plt.close(fig)


def _markdown(cfg: Config, pre: Path, summary: list[dict],
              comparisons: Optional[list[dict]] = None) -> str:
    metric = summary[0]["metric"]
    lines = [f"# Study: {cfg.experiment}", "",
             f"Pretrained backbone: `{pre}`. Every cell finetunes with the same budget "
             f"({cfg.finetune.epochs or cfg.trainer.epochs} epochs of "
             f"{cfg.finetune.steps_per_epoch or 'one pass over the labels in'} steps, batch "
             f"{cfg.finetune.batch_size or cfg.trainer.batch_size}) and is scored on the same "
             f"test split. `pretrained` and `scratch` share the finetuning recipe"
             + (f" (semi_supervised={cfg.finetune.semi_supervised}: both also learn from the "
                f"unlabeled split); `scratch_labels_only` never sees unlabeled data"
                if cfg.finetune.semi_supervised != "none" else "") + "."
             + (" `frozen_knn`, `frozen_logreg` and `frozen_spreading` classify the frozen "
                "pretrained embedding (kNN, logistic regression, label spreading over a kNN "
                "graph of the pool; pretrainer.frozen), seconds each."
                if cfg.study.frozen else "")
             + (" `classical` is the strongest simple baseline (pretrainer.baselines: TF-IDF + "
                "logistic regression for text, gradient boosting for tables, logistic "
                "regression on pixels for images) on the same labeled and test examples."
                if cfg.study.classical else ""), "",
             f"| fraction | labels | init | test {metric} (mean ± std) | seeds |",
             "|---|---|---|---|---|"]
    lines += [f"| {s['fraction']:g} | {s['labels']} | {s['arm']} | {_pm(s)} | {s['n']} |"
              for s in summary]
    if comparisons:
        lines += ["", f"Differences in test {metric} (an arm minus scratch, or pretrained minus "
                  f"a baseline, on the same labels and test examples; \"within noise\" when the 95% interval covers zero):", "",
                  "| fraction | comparison | difference |", "|---|---|---|"]
        lines += [f"| {c['fraction']:g} | "
                  f"{c['arm'] if ' - ' in c['arm'] else c['arm'] + ' − scratch'} | "
                  f"{c['verdict']} |" for c in comparisons]
    lines += ["", "![label efficiency](label_efficiency.png)", ""]
    return "\n".join(lines)
