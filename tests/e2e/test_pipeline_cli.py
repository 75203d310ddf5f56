"""End to end through a real subprocess, as a user's shell runs it (tiny data, 1 epoch)."""

import json
from pathlib import Path

import pytest
from conftest import run_cli

pytestmark = pytest.mark.e2e

TINY = ["data.max_samples=400", "data.max_test=120", "data.labeled_fraction=0.1",
        "trainer.epochs=1", "finetune.epochs=1", "backbone.filters=[8,16]",
        "backbone.latent_dim=16", "deploy.parity_samples=64", "trainer.verbose=false",
        "deploy=all", "deploy.allow_chance=true"]  # a 1-epoch model may be no better than chance


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("pipeline")
    proc = run_cli(["pipeline", "--config", "fashion_ae", *TINY], cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cwd, proc


def test_pipeline_writes_every_artifact(pipeline_run):
    cwd, proc = pipeline_run
    store = cwd / "data" / "fashion_mnist_small"
    manifest = json.loads((store / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"unlabeled", "train", "val", "test"}
    assert manifest["splits"]["test"]["count"] == 120
    assert list(store.glob("unlabeled-00000-of-*.tfrecord"))

    exp = cwd / "runs" / "fashion_ae"
    (pre,) = exp.glob("pretrain-*")
    for name in ("config.yaml", "manifest.json", "backbone.keras", "history.csv", "DONE",
                 "plots/reconstructions.png"):
        assert (pre / name).exists(), name
    assert any((pre / "tb").rglob("events.out.tfevents.*"))
    finetunes = sorted(exp.glob("finetune-*"))
    inits = [json.loads((f / "manifest.json").read_text())["init"] for f in finetunes]
    # the classical model becomes a finetune run (a Keras model) only when it wins on val
    mark = json.loads((exp / "MODEL.json").read_text())
    assert inits[:2] == ["pretrained", "scratch"]
    assert inits[2:] == (["classical"] if mark["arm"] == "classical" else [])
    assert mark["arm"] in ("pretrained", "scratch", "classical") and "val" in mark["why"]
    assert max(mark["val"], key=mark["val"].get) == mark["arm"]
    for ft in finetunes:
        assert (ft / "model.keras").is_file() and (ft / "DONE").is_file()
    lineage = json.loads((finetunes[0] / "manifest.json").read_text())
    assert lineage["parent_run"] == str(pre.resolve())
    assert lineage["dataset_manifest_sha256"]

    evaluations = sorted(exp.glob("evaluate-*"))
    assert len(evaluations) == len(finetunes)
    frozen = json.loads((evaluations[0] / "frozen_logreg" / "metrics.json").read_text())
    assert frozen["samples"] == 120 and 0.0 <= frozen["accuracy"] <= 1.0
    metrics = json.loads((evaluations[0] / "metrics.json").read_text())
    assert metrics["samples"] == 120 and 0.0 <= metrics["accuracy"] <= 1.0
    assert (evaluations[0] / "plots" / "confusion_matrix.png").stat().st_size > 1000
    assert (evaluations[0] / "report.md").is_file()

    (dep,) = exp.glob("deploy-*")
    assert json.loads((dep / "manifest.json").read_text())["parent_run"] == mark["finetune"]
    assert mark["deploy"] == str(dep)
    assert (dep / "export" / "fashion_ae" / "1" / "saved_model.pb").is_file()
    parity = json.loads((dep / "export" / "parity.json").read_text())["saved_model"]
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4
    assert parity["label_agreement"] == 1.0
    everything = json.loads((dep / "export" / "parity.json").read_text())
    assert set(everything) == {"saved_model", "litert", "onnx"}
    assert all(p["passed"] for p in everything.values())
    assert (dep / "export" / "model.tflite").is_file() and (dep / "export" / "model.onnx").is_file()
    card = (dep / "export" / "MODEL_CARD.md").read_text()
    assert "## Lineage" in card and "accuracy" in card
    assert (pre.name in card) == (mark["arm"] == "pretrained")  # the deployed arm's lineage
    assert card.startswith("---\nlicense: mit\n") and "pipeline_tag: image-classification" in card
    assert str(cwd) not in card and "None" not in card and "{'" not in card
    if mark["arm"] == "pretrained":
        assert "Pretrained minus scratch" in card  # the comparison with its interval
    assert (exp / "serving" / "fashion_ae" / "1").is_dir()  # published: allow_chance
    # the closing table
    assert "pretrained" in proc.stdout and "scratch" in proc.stdout
    assert "frozen spreading" in proc.stdout and "what this means" in proc.stdout
    assert "exported model" in proc.stdout


def test_the_winning_arm_is_what_the_verbs_use_by_default(pipeline_run):
    cwd, _ = pipeline_run
    exp = cwd / "runs" / "fashion_ae"
    mark = json.loads((exp / "MODEL.json").read_text())
    proc = run_cli(["evaluate", *TINY], cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "using the experiment's model" in proc.stderr + proc.stdout
    newest = sorted(exp.glob("evaluate-*"))[-1]
    assert json.loads((newest / "metrics.json").read_text())["finetune_run"] == mark["finetune"]


def test_compare_prints_runs_side_by_side(pipeline_run):
    cwd, _ = pipeline_run
    exp = cwd / "runs" / "fashion_ae"
    evals = sorted(str(p) for p in exp.glob("evaluate-*"))
    finetunes = sorted(str(p) for p in exp.glob("finetune-*"))
    proc = run_cli(["evaluate", "--compare", evals[0], "--compare", finetunes[1]], cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "accuracy" in proc.stdout and "pretrained" in proc.stdout and "scratch" in proc.stdout
    proc = run_cli(["evaluate", "--compare", str(cwd / "nope")], cwd=cwd)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_stages_rerun_alone_from_earlier_runs(pipeline_run):
    cwd, _ = pipeline_run
    exp = cwd / "runs" / "fashion_ae"
    (pre,) = exp.glob("pretrain-*")
    proc = run_cli(["finetune", "--run", str(pre), *TINY], cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # latest finetune run, a new deploy run, pruned to half its weights
    proc = run_cli(["deploy", *TINY, "deploy.prune_sparsity=0.5", "deploy.prune_epochs=1",
                    "deploy.formats=[saved_model]"], cwd=cwd)  # (every format: the fixture)
    assert proc.returncode == 0, proc.stderr[-2000:]
    deploys = sorted(exp.glob("deploy-*"))
    assert len(deploys) == 2
    pruning = json.loads((deploys[-1] / "export" / "parity.json").read_text())["pruning"]
    assert 0.49 <= pruning["achieved_sparsity"] <= 0.51
    assert "Pruned to" in (deploys[-1] / "export" / "MODEL_CARD.md").read_text()
    # one TF Serving base path across deploy runs; versions only increase
    serving = exp / "serving" / "fashion_ae"
    assert sorted(p.name for p in serving.iterdir()) == ["1", "2"]
    assert (deploys[-1] / "export" / "fashion_ae" / "2" / "saved_model.pb").is_file()


def test_incomplete_run_is_refused(pipeline_run):
    cwd, _ = pipeline_run
    (pre,) = (cwd / "runs" / "fashion_ae").glob("pretrain-*")
    broken = pre.with_name(pre.name + "-copy")
    broken.mkdir()
    (broken / "manifest.json").write_text((pre / "manifest.json").read_text())
    proc = run_cli(["finetune", "--run", str(broken), *TINY], cwd=cwd)
    assert proc.returncode == 2
    assert "incomplete" in proc.stderr and "Traceback" not in proc.stderr


def test_finetune_without_pretrain_says_what_to_run(tmp_path):
    proc = run_cli(["finetune", "--config", "digits_ae", "trainer.verbose=false"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "pretrainer collect" in proc.stderr or "pretrainer pretrain" in proc.stderr


def test_cifar_offline_is_one_line_error(tmp_path):
    env = {"KERAS_HOME": str(tmp_path / "keras"), "HTTPS_PROXY": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9"}
    for verb in ("pretrain", "collect"):  # pretrain collects a missing store first
        proc = run_cli([verb, "--config", "cifar_ae"], cwd=tmp_path, env=env, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "cifar10" in proc.stderr and "fashion_ae" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) <= 3


def test_embedding_quality_straight_after_pretrain(pipeline_run):
    cwd, _ = pipeline_run
    (pre,) = [p for p in (cwd / "runs" / "fashion_ae").glob("pretrain-*") if (p / "DONE").exists()]
    proc = run_cli(["evaluate", "--run", str(pre), *TINY], cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kNN accuracy" in proc.stdout and "logistic probe accuracy" in proc.stdout
    newest = sorted((cwd / "runs" / "fashion_ae").glob("evaluate-*"))[-1]
    metrics = json.loads((newest / "metrics.json").read_text())
    assert 0.1 <= metrics["knn_accuracy"] <= 1.0 and metrics["feature_dim"] == 16
    assert metrics["linear_probe_accuracy"] > 0.15  # 10 classes: better than chance


def test_evaluate_explain_writes_a_map_grid_of_right_and_wrong_examples(pipeline_run):
    cwd, _ = pipeline_run
    proc = run_cli(["evaluate", *TINY, "evaluate.explain=6", "evaluate.explain_method=saliency"],
                   cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    newest = sorted((cwd / "runs" / "fashion_ae").glob("evaluate-*"))[-1]
    assert (newest / "plots" / "saliency.png").read_bytes()[:4] == b"\x89PNG"
    shown = json.loads((newest / "explain.json").read_text())["examples"]
    assert len(shown) == 6
    wrong = sum(e["true"] != e["predicted"] for e in shown)
    assert wrong == 3  # a 1-epoch model on 120 test images gets at least 3 wrong and 3 right
    assert "saliency.png" in (newest / "report.md").read_text()


def test_predict_and_embed_an_image_folder_like_the_model(pipeline_run, tmp_path, monkeypatch):
    import csv

    import keras
    import numpy as np
    from PIL import Image

    from pretrainer.config import compose
    from pretrainer.data import pipeline
    from pretrainer.stages import embed, predict

    cwd, _ = pipeline_run
    monkeypatch.chdir(cwd)  # the in-process calls below find runs/ and data/ here
    exp = cwd / "runs" / "fashion_ae"
    x, _ = pipeline.to_numpy(pipeline.examples(cwd / "data" / "fashion_mnist_small", "test",
                                               batch_size=64, cache=False, standardize=False))
    x = x[:40]
    folder = tmp_path / "my photos [2026]"
    (folder / "sub dir").mkdir(parents=True)
    names = []
    for i, img in enumerate(np.rint(x * 255).astype(np.uint8)):
        name = f"{'sub dir/' if i % 2 else ''}item ({i:02d}).png"
        Image.fromarray(img[..., 0]).save(folder / name)
        names.append(name)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    deploy_run = sorted(exp.glob("deploy-*"))[0]
    ft = Path(json.loads((deploy_run / "manifest.json").read_text())["parent_run"])
    from pretrainer.exports.savedmodel import float32_copy

    # (trained in mixed_bfloat16 where auto picks it; predictions and exports compute in f32)
    expected = float32_copy(keras.saving.load_model(ft / "model.keras")).predict(x, verbose=0)
    proc = run_cli(["predict", str(folder), "--run", str(deploy_run), "-o",
                    str(tmp_path / "p.csv")], cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "skipped 1 unreadable" in proc.stderr and "broken.png" in proc.stderr
    predict.run(compose("fashion_ae", []), str(folder), run=str(ft),
                output=str(tmp_path / "p.jsonl"), batch_size=16)  # in-process: saves a start
    for out in (tmp_path / "p.csv", tmp_path / "p.jsonl"):
        if out.suffix == ".csv":
            rows = list(csv.DictReader(out.open()))
            probs = {r["input"]: [float(r[k]) for k in r if k.startswith("p_")] for r in rows}
        else:
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            probs = {r["input"]: list(r["probabilities"].values()) for r in rows}
        assert len(rows) == 40
        got = np.array([probs[n] for n in names])
        np.testing.assert_allclose(got, expected, atol=1e-4)
    proc = run_cli(["predict", str(tmp_path / "p.csv"), "--run", str(ft)], cwd=cwd)
    assert proc.returncode == 2 and "takes image inputs" in proc.stderr

    (pre,) = [p for p in exp.glob("pretrain-*") if (p / "DONE").exists()]
    proc = run_cli(["embed", "test", "--run", str(pre)], cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = pre / "embeddings" / "test"
    assert "tensorboard --logdir" in proc.stdout
    emb = np.load(out / "embeddings.npy")
    meta = (out / "metadata.tsv").read_text().splitlines()
    assert emb.shape == (120, 16) and len(meta) == 121 and meta[0] == "example\tlabel\tclass_name"
    assert 'tensor_path: "tensors.tsv"' in (out / "projector_config.pbtxt").read_text()
    assert len((out / "tensors.tsv").read_text().splitlines()) == 120
    embed.run(compose("fashion_ae", []), str(folder), run=str(ft), output=str(tmp_path / "emb"))
    assert np.load(tmp_path / "emb" / "embeddings.npy").shape[0] == 40
    meta = (tmp_path / "emb" / "metadata.tsv").read_text().splitlines()
    assert sorted(meta) == sorted(names)  # one column: no header
