"""Every shipped pretext x backbone pair pretrains and hands finetune a backbone it accepts."""

import json

import numpy as np
import pytest
from conftest import run_cli

pytestmark = pytest.mark.e2e

TINY = ["data.max_samples=300", "data.max_test=60", "trainer.epochs=1", "finetune.epochs=1",
        "trainer.verbose=false", "backbone.filters=[8,16]", "backbone.latent_dim=16",
        "trainer.batch_size=64"]


@pytest.mark.parametrize("experiment", ["fashion_denoise", "fashion_simclr", "fashion_dcgan"])
def test_image_pretexts_pretrain_then_finetune(tmp_path, experiment):
    for verb in ("pretrain", "finetune"):
        proc = run_cli([verb, "--config", experiment, *TINY], cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exp = tmp_path / "runs" / experiment
    (pre,) = exp.glob("pretrain-*")
    manifest = json.loads((pre / "manifest.json").read_text())
    (health,) = manifest["health"].values()
    assert health is not None and np.isfinite(health)
    if experiment == "fashion_dcgan":
        assert (pre / "plots" / "generated-epoch001.png").is_file()
    if experiment == "fashion_simclr":
        assert "effective_rank" in (pre / "history.csv").read_text()
    (ft,) = exp.glob("finetune-*")
    assert json.loads((ft / "manifest.json").read_text())["parent_run"] == str(pre.resolve())


def test_house_linear_learns_the_seed_line(tmp_path):
    proc = run_cli(["finetune", "--config", "house_linear", "trainer.verbose=false"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "learned: price ≈ 2.0000 × area + 0.0000" in proc.stdout.replace("-0.0000", "0.0000")
    (ft,) = (tmp_path / "runs" / "house_linear").glob("finetune-*")
    linear = json.loads((ft / "manifest.json").read_text())["linear"]
    assert linear["coefficients"]["area"] == pytest.approx(2.0, abs=1e-3)
    assert linear["intercept"] == pytest.approx(0.0, abs=0.05)


def test_tabular_denoising_pretrain_finetune_evaluate_deploy(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    kind = np.where(x[:, 0] + x[:, 1] > 0, "big", "small")
    color = rng.choice(["red", "blue"], 300)
    lines = ["a,b,c,color,kind"] + [f"{r[0]:.3f},{r[1]:.3f},{r[2]:.3f},{c},{k}"
                                    for r, c, k in zip(x, color, kind, strict=True)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    args = ["--config", "house_linear", f"data.path={tmp_path / 't.csv'}", "data.target=kind",
            "data.task=auto", "data.name=t", "data.val_fraction=0.1", "data.test_fraction=0.2",
            "data.labeled_fraction=0.2", "backbone.filters=[16]", "backbone.latent_dim=8",
            "pretext=denoising", "finetune.init=pretrained", "finetune.optimizer=adam",
            "finetune.learning_rate=0.01", "finetune.epochs=30", "trainer.epochs=3",
            "trainer.verbose=false", "deploy=all"]
    proc = run_cli(["pipeline", *args], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exp = tmp_path / "runs" / "house_linear"
    accs = [json.loads((e / "metrics.json").read_text())["accuracy"]
            for e in exp.glob("evaluate-*")]
    assert len(accs) == 2 and min(accs) > 0.7  # a learnable rule
    (dep,) = exp.glob("deploy-*")
    parity = json.loads((dep / "export" / "parity.json").read_text())
    assert all(p["passed"] for p in parity.values())


TEXT = ["trainer.epochs=1", "finetune.epochs=1", "trainer.verbose=false",
        "backbone.latent_dim=32", "backbone.num_layers=1", "backbone.intermediate_dim=64",
        "backbone.sequence_length=32", "backbone.vocabulary_size=300", "data.max_samples=400",
        "data.max_test=50", "deploy.parity_samples=20"]


@pytest.mark.parametrize("experiment", ["text_lm", "text_mlm"])
def test_language_models_pretrain_finetune_deploy_raw_strings(tmp_path, experiment):
    verbs = ["pretrain", "finetune"] + (["deploy"] if experiment == "text_mlm" else [])
    for verb in verbs:
        proc = run_cli([verb, "--config", experiment, *TEXT], cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exp = tmp_path / "runs" / experiment
    (pre,) = exp.glob("pretrain-*")
    assert (pre / "vocab.txt").read_text().startswith("[PAD]\n")
    (health,) = json.loads((pre / "manifest.json").read_text())["health"].values()
    assert health > 1.0  # a perplexity
    if experiment == "text_mlm":
        (dep,) = exp.glob("deploy-*")
        parity = json.loads((dep / "export" / "parity.json").read_text())["saved_model"]
        assert parity["passed"] and parity["max_abs_diff"] < 1e-4
        proc = run_cli(["deploy", "--config", experiment, *TEXT, "deploy=default"], cwd=tmp_path)
        assert proc.returncode == 2 and "saved_model only" in proc.stderr


def test_seed_cnn_trunk_pretrains_and_finetunes(tmp_path):
    args = ["--config", "fashion_ae", "backbone=seed_cnn", *TINY[:5], "trainer.batch_size=64"]
    for verb in ("pretrain", "finetune"):
        proc = run_cli([verb, *args], cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("backbone", ["mobilenet", "resnet"])
def test_keras_applications_backbones_on_a_32px_image_folder(tmp_path, backbone):
    from test_folders import make_class_folder

    root = make_class_folder(tmp_path / "imgs", per_class=12)
    args = ["--config", "folder_ae", f"data.path={root}", "data.image_size=[32,32]",
            f"backbone={backbone}", "backbone.latent_dim=16", "backbone.filters=[8,16]",
            "trainer.epochs=1", "finetune.epochs=1", "trainer.batch_size=16",
            "trainer.verbose=false"]
    for verb in ("pretrain", "finetune"):
        proc = run_cli([verb, *args], cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
