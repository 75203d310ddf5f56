"""The model card (pretrainer.exports.card) and the side-by-side report, from run
directories made here (the end-to-end tests write them through the real stages)."""

import json

from pretrainer import files, runs
from pretrainer.data.records import StoreManifest
from pretrainer.exports import card

DATASET = StoreManifest.from_json({
    "name": "shoes", "modality": "image", "task": "classification", "shape": [28, 28, 1],
    "num_classes": 2, "class_names": ["boot [winter]", "sandal"], "labels_per_class": 5,
    "source": {"name": "image_folder", "licence": "CC-BY-4.0"},
    "splits": {s: {"count": n, "labeled": s != "unlabeled"} for s, n in
               (("unlabeled", 900), ("train", 10), ("val", 50), ("test", 100))}})
PARITY = {"saved_model": {"max_abs_diff": 1e-7, "label_agreement": 1.0, "accuracy_delta": 0.0,
                          "latency_ms_p50": 1.5, "size_bytes": 2e6, "passed": True}}


def _run(root, stage, parent=None, **fields):
    path = runs.new_run_dir(root, "shoes", stage)
    runs.write_lineage(path, stage, "seed: 0\nfinetune:\n  mode: full\n  init: pretrained\n",
                       parent=parent)
    runs.update_manifest(path, **fields)
    return path


def test_a_card_says_what_the_model_is_how_to_call_it_and_what_is_unknown(tmp_path):
    pre = _run(tmp_path, "pretrain", pretext="simclr", backbone="conv_ae",
               health={"effective_rank": 12.5})
    ft = _run(tmp_path, "finetune", parent=pre, init="pretrained", mode="full", epochs=4,
              kept={"epoch": 3, "rule": "best val_accuracy"})
    text = card.render("shoes", DATASET, ft, PARITY)
    assert text.startswith("---\n") and "license: cc-by-4.0" in text.lower()
    assert "boot [winter], sandal" in text and "pretrained on 900" in text
    assert "10 labeled examples" in text and "(5 per class)" in text
    assert "No evaluate run found" in text  # said, not invented
    assert '{"instances": [{"b64":' in text  # the default signature takes image files
    assert "epoch 3 of 4" in text and "| saved_model |" in text

    ev = _run(tmp_path, "evaluate", parent=ft)
    files.atomic_write_json(ev / "metrics.json", {
        "split": "test", "samples": 100, "accuracy": 0.81, "f1_macro": 0.8, "f1_weighted": 0.8})
    runs.mark_done(ev)
    text = card.render("shoes", DATASET, ft, PARITY)
    assert "accuracy 0.8100" in text and "evaluate run `" + ev.name in text


def test_compare_prints_evaluations_side_by_side(tmp_path, capsys):
    from pretrainer.report import compare_runs

    found = []
    for init, acc in (("pretrained", 0.81), ("scratch", 0.62)):
        ft = _run(tmp_path, "finetune")
        runs.mark_done(ft)
        ev = _run(tmp_path, "evaluate", parent=ft)
        (ev / "metrics.json").write_text(json.dumps({"init": init, "labels": 10,
                                                     "samples": 100, "accuracy": acc}))
        runs.mark_done(ev)
        found.append(ft)  # a finetune run stands for its newest evaluation
    compare_runs([str(p) for p in found])
    out = capsys.readouterr().out
    assert "0.8100" in out and "0.6200" in out and "pretrained" in out and "scratch" in out


def test_a_table_models_card_shows_its_columns_and_the_litert_input_it_takes(tmp_path):
    table = StoreManifest.from_json({
        "name": "homes", "modality": "tabular", "task": "classification", "shape": [3],
        "num_classes": 2, "class_names": ["cheap", "dear"],
        "columns": [{"column": "area (m²)", "kind": "numeric", "fill": 80.0},
                    {"column": "kind", "kind": "categorical", "categories": ["flat", "villa"]}],
        "feature_names": ["area (m²)", "kind=flat", "kind=villa"],
        "source": {"name": "csv"}, "splits": {"train": {"count": 20, "labeled": True}}})
    ft = _run(tmp_path, "finetune", init="scratch", mode="full", epochs=2)
    text = card.render("homes", table, ft, {**PARITY, "litert": PARITY["saved_model"]})
    assert "A tabular model" in text and "2 columns by name (area (m²), kind)" in text
    assert '"area__m__": 80.0, "kind": "flat"' in text  # the REST example, by input name
    assert "runner(features=x)" in text and "float32 [batch, 3]" in text
    assert "runner(images=x)" not in text and "b64" not in text
