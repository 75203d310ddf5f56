"""MODEL_CARD.md in the layout practitioners expect (Hugging Face model cards).

YAML front matter (license, library, pipeline tag, datasets, metrics, model-index),
then what the model is, its data, training hyperparameters, results with their
uncertainty (pretrained vs scratch when a scratch run was scored on the same test
split), a usage snippet per export format and its limits. Paths are run names,
never the training machine's absolute paths.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Optional

from pretrainer import runs
from pretrainer.data.records import StoreManifest
from pretrainer.records import RunManifest


def _spdx(licence: Optional[str]) -> str:
    """The licence identifier for the front matter, from the source's licence text."""
    text = (licence or "").lower()
    for needle, spdx in (("bsd-3", "bsd-3-clause"), ("mit", "mit"), ("bsd", "bsd"),
                         ("apache", "apache-2.0"), ("cc-by-4", "cc-by-4.0"),
                         ("cc0", "cc0-1.0")):
        if needle in text:
            return spdx
    return "unknown"


def _yaml_scalar(v) -> str:
    """Plain words stay bare (`license: mit`); anything YAML could misread is quoted."""
    if isinstance(v, bool):
        return str(v).lower()
    if not isinstance(v, str):
        return str(v)
    plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./+-]*( [A-Za-z0-9_./+()-]+)*", v)
    if plain and v.lower() not in ("true", "false", "yes", "no", "on", "off", "null", "none"):
        return v
    return json.dumps(v, ensure_ascii=False)


def _front_matter(meta: dict) -> list[str]:
    """A small YAML writer for the fixed shape below (PyYAML would reorder keys)."""
    lines = ["---"]
    for k, v in meta.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            lines.append(f"{k}:")
            lines += _yaml_list_of_dicts(v, 0)
        elif isinstance(v, list):
            lines.append(f"{k}:")
            lines += [f"- {_yaml_scalar(x)}" for x in v]
        else:
            lines.append(f"{k}: {_yaml_scalar(v)}")
    return lines + ["---"]


def _yaml_list_of_dicts(items: list[dict], indent: int) -> list[str]:
    pad, out = " " * indent, []
    for item in items:
        first = True
        for k, v in item.items():
            lead = f"{pad}- " if first else f"{pad}  "
            first = False
            if isinstance(v, dict):
                out.append(f"{lead}{k}:")
                out += [f"{pad}    {kk}: {_yaml_scalar(vv)}" for kk, vv in v.items()]
            elif isinstance(v, list):
                out.append(f"{lead}{k}:")
                out += _yaml_list_of_dicts(v, indent + 2)
            else:
                out.append(f"{lead}{k}: {_yaml_scalar(v)}")
    return out


def _evaluation_of(finetune_run: Path) -> Optional[tuple[Path, dict]]:
    """(evaluate run, metrics.json) of the newest finished evaluate run of this model."""
    exp = Path(finetune_run).parent
    for ev in sorted(exp.glob("evaluate-*"), reverse=True):
        if runs.is_done(ev) and runs.read_manifest(ev).is_child_of(finetune_run):
            return ev, json.loads((ev / "metrics.json").read_text())
    return None


def _scratch_comparison(finetune_run: Path, evaluation: Optional[tuple]) -> Optional[dict]:
    """Paired bootstrap of this model vs the newest scratch model scored on the same
    test examples of the same store (what `pipeline` prints)."""
    if evaluation is None or runs.read_manifest(finetune_run).init in ("scratch", "classical"):
        return None
    from pretrainer.scoring import evaluations_beside, example_scores
    from pretrainer.stats import paired_bootstrap

    ev, metrics = evaluation
    if not (ev / "predictions.npz").is_file():  # an evaluation from before they were kept
        return None
    mine = example_scores(ev)
    # the scratch run of the same recipe first (pipeline also trains one on the labels
    # alone for a FixMatch recipe), else the newest scratch run
    semi = runs.read_manifest(finetune_run).semi_supervised
    found = []
    for other, parent, model in evaluations_beside(ev, "scratch"):
        if not (other / "predictions.npz").is_file():
            continue
        theirs = example_scores(other)
        if len(theirs) == len(mine):
            same = model.semi_supervised == semi

            found.append((not same, len(found), other, parent, theirs))
    if not found:
        return None
    _, _, other, parent, theirs = min(found, key=lambda t: t[:2])
    scratch = json.loads((other / "metrics.json").read_text())
    return {"scratch_run": parent.name, "scratch": scratch,
            "interval": paired_bootstrap(mine, theirs)}


def _config(run: Optional[Path]) -> dict:
    if not run or not (Path(run) / "config.yaml").is_file():
        return {}
    import yaml

    return yaml.safe_load((Path(run) / "config.yaml").read_text()) or {}


def _fmt(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v) or "none"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items()) or "none"
    return str(v)


def _epochs(n) -> str:
    return f"{_fmt(n)} epoch{'' if n == 1 else 's'}"


def _usage(name: str, dataset: StoreManifest, formats: list[str]) -> list[str]:
    kind = dataset.kind
    out = ["## How to use", ""] + kind.card_usage(name, dataset)
    out += ["Python, the SavedModel:", "", "```python", "import tensorflow as tf",
            *kind.card_imports,
            f"fn = tf.saved_model.load(\"serving/{name}/1\").signatures[\"serving_default\"]",
            f"out = fn({kind.card_call})  # probabilities, label, class_name", "```", ""]
    if "litert" in formats:
        tensor = kind.entry_spec(dataset).get("tensor", {})
        shape = "[" + ", ".join("batch" if d is None else str(d)
                                for d in tensor.get("shape", [])) + "]"
        out += ["LiteRT (`model.tflite`, `labels.txt` and `model.tflite.json` beside it): "
                f"input `{kind.tensor_name}`, float32 {shape} "
                f"({tensor.get('preprocessing', '')}), output `probabilities`.",
                "", "```python", "from ai_edge_litert.interpreter import Interpreter",
                "runner = Interpreter(model_path=\"model.tflite\").get_signature_runner()",
                f"probs = runner({kind.tensor_name}=x)[\"probabilities\"]", "```", ""]
    if "onnx" in formats:
        out += ["ONNX (`model.onnx`; class names in its `metadata_props`):", "", "```python",
                "import onnxruntime as ort", "s = ort.InferenceSession(\"model.onnx\")",
                "probs = s.run([\"probabilities\"], {s.get_inputs()[0].name: x})[0]",
                "names = json.loads(s.get_modelmeta().custom_metadata_map[\"class_names\"])",
                "```", ""]
    return out


def _meta(name: str, dataset: StoreManifest, pre: RunManifest,
          metrics: Optional[dict]) -> dict:
    """The card's YAML front matter (Hugging Face's model card fields)."""
    regression, source = dataset.regression, dataset.source
    task = ("tabular-regression" if regression else dataset.kind.card_tag)
    metric_rows = []
    if metrics and regression:
        metric_rows = [{"type": k, "value": round(float(metrics[k]), 6)}
                       for k in ("mse", "mae", "r2")]
    elif metrics:
        metric_rows = [{"type": "accuracy", "value": round(float(metrics["accuracy"]), 6)},
                       {"type": "f1", "name": "macro F1",
                        "value": round(float(metrics["f1_macro"]), 6)}]
    meta = {"license": _spdx(source.get("licence")), "library_name": "keras",
            "pipeline_tag": task,
            "tags": ["pretrainer", "self-supervised", *([pre.pretext] if pre.pretext
                                                        else []), dataset.modality],
            "datasets": [dataset.name],
            "metrics": [m["type"] for m in metric_rows] or ["accuracy"]}
    if metric_rows:
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": task},
            "dataset": {"name": dataset.name, "type": str(source.get("dataset")
                                                              or source.get("name")),
                        "split": metrics.get("split", "test")},
            "metrics": metric_rows}]}]
    return meta


def _evaluation_lines(metrics: Optional[dict], regression: bool, comparison: Optional[dict],
                      finetune_run: Path, pruning: Optional[dict]) -> list[str]:
    """## Evaluation: the evaluate run's numbers, the scratch comparison, pruning."""
    lines: list[str] = []
    lines += ["", "## Evaluation", ""]
    if metrics and regression:
        lines += [f"On the {metrics['split']} split ({metrics['samples']} examples): "
                  f"MSE {metrics['mse']:.6g}, MAE {metrics['mae']:.6g}, R² {metrics['r2']:.4f}."]
    elif metrics:
        lines += [f"On the {metrics['split']} split ({metrics['samples']} examples): "
                  f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['f1_macro']:.4f}, "
                  f"weighted F1 {metrics['f1_weighted']:.4f}."]
    else:
        lines += ["No evaluate run found for this model: run `pretrainer evaluate --run "
                  f"{Path(finetune_run).name}`."]
    if comparison:
        ci, s = comparison["interval"], comparison["scratch"]
        if regression:
            lines += ["", f"Same architecture from scratch on the same labels "
                          f"(`{comparison['scratch_run']}`): MSE {s['mse']:.6g}. Pretrained "
                          f"minus scratch squared error: {-ci['mean']:+.4g} (95 % CI "
                          f"{-ci['high']:+.4g} to {-ci['low']:+.4g}, {ci['method']})."]
        else:
            from pretrainer.stats import verdict

            lines += ["", f"Same architecture from scratch on the same labels "
                          f"(`{comparison['scratch_run']}`): accuracy {s['accuracy']:.4f}. "
                          f"Pretrained minus scratch: {verdict(ci)}."]
    if pruning:
        lines += ["", f"Pruned to {pruning['achieved_sparsity']:.1%} zero weights "
                      f"(target {pruning['target_sparsity']:.0%}): accuracy "
                      f"{pruning['accuracy_before']:.4f} -> {pruning['accuracy_after']:.4f} on "
                      f"{pruning['samples']} test examples."]
    return lines


def _parity_lines(parity: dict) -> list[str]:
    """The table of exports, each checked against Keras in its own runtime."""
    lines: list[str] = []
    lines += ["", "### Exports, each checked against Keras in its own runtime", "",
              "| format | max abs diff | label agreement | accuracy delta | p50 ms | size MB | passed |",
              "|---|---|---|---|---|---|---|"]
    for fmt, p in parity.items():
        lines.append(f"| {fmt}{' (' + p['quantize'] + ')' if p.get('quantize') not in (None, 'none') else ''}"
                     f" | {p['max_abs_diff']:.2e} | {p['label_agreement']:.2%} | "
                     + ("n/a" if p["accuracy_delta"] is None
                        else f"{p['accuracy_delta'] * 100:+.2f} pts")
                     + f" | {p['latency_ms_p50']:.2f} | "
                     f"{p['size_bytes'] / 1e6:.2f} | {'yes' if p['passed'] else 'no'} |")
    return lines


def render(name: str, dataset: StoreManifest, finetune_run: Path, parity: dict, model=None, *,
           pruning: Optional[dict] = None, chance: Optional[str] = None, cfg=None) -> str:
    ft = runs.read_manifest(finetune_run)
    pre_run = ft.parent
    pre = runs.read_manifest(pre_run) if pre_run and pre_run.is_dir() else RunManifest()
    ft_cfg, pre_cfg = _config(finetune_run), _config(pre_run)
    evaluation = _evaluation_of(finetune_run)
    metrics = evaluation[1] if evaluation else None
    comparison = _scratch_comparison(finetune_run, evaluation)
    regression = dataset.regression
    modality = dataset.modality
    source = dataset.source
    n_pool, n_train = dataset.count("unlabeled"), dataset.count("train")
    meta = _meta(name, dataset, pre, metrics)
    params = model.count_params() if model is not None else None
    lines = _front_matter(meta) + ["", f"# {name}", ""]
    if chance:
        lines += [f"> **Warning: no better than chance** ({chance}). Not published to "
                  "serving/ unless deployed with `deploy.allow_chance=true`.", ""]
    names = list(dataset.class_names)
    what = (f"regression of `{source.get('target')}`" if regression else
            f"classification into {len(names)} classes ("
            + ", ".join(names[:20]) + (", …" if len(names) > 20 else "") + ")")
    lines += [f"{'An' if modality[0] in 'aeiou' else 'A'} {modality} model for {what}, trained with pretrainer: "
              + (f"a `{pre.backbone}` backbone pretrained on {n_pool}"
                 f" unlabeled examples with the `{pre.pretext}` pretext task, then "
                 f"finetuned ({ft.mode}) on {n_train} labeled examples."
                 if pre_run else f"trained from scratch on {n_train} "
                                 f"labeled examples."), "",
              "## Model", "",
              f"- architecture: `{ft_cfg.get('backbone', {}).get('name', pre.backbone)}`"
              f" backbone + {'regression' if regression else 'classification'} head"
              + (f"; {params:,} parameters" if params is not None else ""),
              f"- input: {dataset.kind.card_input(dataset)}",
              "- output: " + ("`prediction` (float)" if regression else
                              "`probabilities` (softmax, label order above), `label`, "
                              "`class_name`"), "",
              "## Training data", "",
              f"- dataset `{dataset.name}` (source `{source.get('name')}`"
              + (f", `{source['dataset']}`" if source.get("dataset") else "")
              + (f"; licence: {source['licence']}" if source.get("licence") else "") + ")",
              f"- unlabeled pretraining pool: {n_pool} examples",
              f"- labeled training examples: {n_train}"
              + (f" ({dataset.labels_per_class} per class)" if dataset.labels_per_class
                 else f" ({_fmt(dataset.labeled_fraction)} of the labels)"),
              f"- validation: {dataset.count('val')}, test: {dataset.count('test')}",
              f"- unreadable inputs skipped: {dataset.skipped.get('count', 0)}",
              "", "## Training procedure", ""]
    lines += _hyperparameters(pre_cfg, ft_cfg, pre, ft)
    lines += _evaluation_lines(metrics, regression, comparison, finetune_run, pruning)
    lines += _parity_lines(parity)
    lines += [""] + _usage(name, dataset, list(parity))
    lines += ["## Limits", "",
              f"- Trained with {n_train} labeled examples from one source: "
              "expect errors on classes, styles, sensors or wording the data did not cover.",
              "- Accuracy is an average: the evaluate run's report.md has the per-class table; "
              "some classes can be much worse.",
              "- Not calibrated for, or tested on, inputs from other distributions; do not use "
              "for decisions about people without a separate fairness evaluation.", "",
              "## Lineage", "",
              f"- finetune run `{Path(finetune_run).name}`"
              + (f", pretrain run `{pre_run.name}`" if pre_run else "")
              + (f", evaluate run `{evaluation[0].name}`" if evaluation else ""),
              "- versions: " + ", ".join(f"{k} {v}" for k, v in ft.versions.items()),
              f"- card written {datetime.date.today().isoformat()}", ""]
    return "\n".join(lines)




def _hyperparameters(pre_cfg: dict, ft_cfg: dict, pre: RunManifest, ft: RunManifest
                     ) -> list[str]:
    out = []
    trainer = ft_cfg.get("trainer", {})
    if pre_cfg:
        p, t = pre_cfg.get("pretext", {}), pre_cfg.get("trainer", {})
        lr = t.get("learning_rate")
        out += [f"- pretraining: pretext `{p.get('name')}`, {_epochs(t.get('epochs'))}, "
                f"batch {_fmt(t.get('batch_size'))}, "
                + (f"learning rate {_fmt(lr)}, " if lr is not None else "")
                + f"precision {_fmt(t.get('precision'))}"]
        health = dict(pre.health)
        if health:
            out += [f"- pretext health: {_fmt(health)}"]
    f = ft_cfg.get("finetune", {})
    if f:
        out += [f"- finetuning: mode `{_fmt(f.get('mode'))}`, init `{_fmt(f.get('init'))}`, "
                f"{_epochs(f.get('epochs') or trainer.get('epochs'))}, batch "
                f"{_fmt(f.get('batch_size') or trainer.get('batch_size'))}, learning rate "
                f"{_fmt(f.get('learning_rate'))}, augmentation `{_fmt(f.get('augment'))}`, "
                f"label smoothing {_fmt(f.get('label_smoothing'))}"]
    kept = ft.kept
    if kept and kept.get("epoch") is None:  # not trained by epochs (the classical model)
        out += [f"- weights: {kept.get('rule')}"]
    elif kept:
        out += [f"- weights kept: epoch {kept.get('epoch')} of {ft.epochs} "
                f"({kept.get('rule')})"]
    out += [f"- seed {_fmt(ft_cfg.get('seed'))}; the resolved configs are each run's config.yaml"]
    return out
