"""Every shipped pretext x backbone pair pretrains and hands finetune a backbone it accepts."""

import json

import numpy as np
import pytest
from conftest import run_cli, run_python

pytestmark = pytest.mark.e2e

TINY = ["data.max_samples=300", "data.max_test=60", "trainer.epochs=1", "finetune.epochs=1",
        "trainer.verbose=false", "backbone.filters=[8,16]", "backbone.latent_dim=16",
        "trainer.batch_size=64"]


# Pretraining under the TPU rule (static shapes), checked by fit for every input it trains
# and validates on; on CPU it only drops the last partial batch of each validation pass.
STATIC = ["trainer.static_batches=true", "trainer.batch_size=16"]


def _stages(experiment: str, verbs, overrides, pretrain_extra=()):
    """The stages in this process, as the CLI verbs run them (the CLI itself, a real
    subprocess, is exercised by test_pipeline_cli): each new TensorFlow process costs
    seconds of import on a 2-core machine."""
    from pretrainer.config import compose
    from pretrainer.stages import deploy, finetune, pretrain

    stage = {"pretrain": pretrain, "finetune": finetune, "deploy": deploy}
    for verb in verbs:
        extra = list(pretrain_extra) if verb == "pretrain" else []
        stage[verb].run(compose(experiment, [*overrides, *extra]))


@pytest.mark.parametrize("experiment", ["fashion_denoise", "fashion_simclr", "fashion_dcgan"])
def test_image_pretexts_pretrain_then_finetune(in_tmp, experiment):
    tmp_path = in_tmp
    # the TPU rule, every batch whole, on the pretrain side
    _stages(experiment, ("pretrain", "finetune"), TINY, pretrain_extra=STATIC)
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


def test_tabular_denoising_pretrain_finetune_evaluate_deploy(tmp_path, monkeypatch):
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
            "trainer.verbose=false", "deploy=all", *STATIC]
    proc = run_cli(["pipeline", *args], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exp = tmp_path / "runs" / "house_linear"
    accs = [json.loads((e / "metrics.json").read_text())["accuracy"]
            for e in exp.glob("evaluate-*")]
    assert len(accs) == 2 and min(accs) > 0.7  # a learnable rule
    (dep,) = exp.glob("deploy-*")
    parity = json.loads((dep / "export" / "parity.json").read_text())
    assert all(p["passed"] for p in parity.values())
    # predict from a user's CSV: columns in another order, an extra column, a bad row
    lines = ["kind_guess,color,c,b,a"] + [f"x,{c},{r[2]:.3f},{r[1]:.3f},{r[0]:.3f}"
                                         for r, c in zip(x[:20], color[:20], strict=True)]
    lines.insert(5, "x,red,1.0,oops,2.0")
    (tmp_path / "new rows.csv").write_text("\n".join(lines) + "\n")
    proc = run_cli(["predict", str(tmp_path / "new rows.csv"), "--run", str(dep), "-o",
                    str(tmp_path / "p.csv"), *args[:2]], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "skipped 1 unreadable" in proc.stderr and "row 6" in proc.stderr
    got = (tmp_path / "p.csv").read_text().splitlines()
    assert got[0] == "input,label,class_name,p_big,p_small" and len(got) == 21
    predicted = [line.split(",")[2] for line in got[1:]]
    assert np.mean([p == k for p, k in zip(predicted, kind[:20], strict=True)]) > 0.7
    from pretrainer.config import compose
    from pretrainer.errors import DataError
    from pretrainer.stages import predict

    monkeypatch.chdir(tmp_path)
    cfg = compose("house_linear", [])
    predict.run(cfg, str(tmp_path / "t.csv"), run=str(dep), output=str(tmp_path / "t.out.csv"))
    assert len((tmp_path / "t.out.csv").read_text().splitlines()) == 301  # target ignored
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"lacks the column\(s\) c, color"):
        predict.run(cfg, str(tmp_path / "bad.csv"), run=str(dep))


TEXT = ["trainer.epochs=1", "finetune.epochs=1", "trainer.verbose=false",
        "backbone.latent_dim=32", "backbone.num_layers=1", "backbone.intermediate_dim=64",
        "backbone.sequence_length=32", "backbone.vocabulary_size=300", "data.max_samples=400",
        "data.max_test=50", "deploy.parity_samples=20"]


@pytest.mark.parametrize("experiment", ["text_lm", "text_mlm"])
def test_language_models_pretrain_finetune_deploy_raw_strings(in_tmp, experiment):
    tmp_path = in_tmp
    verbs = ["pretrain", "finetune"] + (["deploy"] if experiment == "text_mlm" else [])
    _stages(experiment, verbs, TEXT, pretrain_extra=STATIC)  # tokenized: static shapes
    exp = tmp_path / "runs" / experiment
    (pre,) = exp.glob("pretrain-*")
    assert (pre / "vocab.txt").read_text().startswith("[PAD]\n")
    (health,) = json.loads((pre / "manifest.json").read_text())["health"].values()
    assert health > 1.0  # a perplexity
    if experiment == "text_mlm":
        (dep,) = exp.glob("deploy-*")
        parity = json.loads((dep / "export" / "parity.json").read_text())["saved_model"]
        assert parity["passed"] and parity["max_abs_diff"] < 1e-4
        from pretrainer.config import compose
        from pretrainer.errors import ConfigError
        from pretrainer.stages import deploy

        with pytest.raises(ConfigError, match="saved_model only"):  # (CLI: exit 2, test_cli)
            deploy.run(compose(experiment, [*TEXT, "deploy=default"]))
        _text_model_is_usable_outside_pretrainer(tmp_path, exp, pre, dep)


def _text_model_is_usable_outside_pretrainer(tmp_path, exp, pre, dep):
    """.keras files load with Keras + keras-hub alone; serve, predict and embed take text."""
    import urllib.request

    (ft,) = exp.glob("finetune-*")
    code = ("import keras, keras_hub, sys; "
            f"b = keras.saving.load_model({str(pre / 'backbone.keras')!r}); "
            f"m = keras.saving.load_model({str(ft / 'model.keras')!r}); "
            "import tensorflow as tf; p = m(tf.constant(['a short text'])).numpy(); "
            "print(p.shape, sorted(k for k in sys.modules if k.startswith('pretrainer')))")
    out = run_python(code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("[]")  # no pretrainer module was needed

    docs = ["Caf\xe9 cr\xe8me, na\xefve r\xe9sum\xe9", "a plain line", "", "one more"]
    (tmp_path / "in.txt").write_bytes("\n".join(docs).encode("latin-1"))
    from pretrainer.config import compose
    from pretrainer.stages import embed, predict

    predict.run(compose("text_mlm", []), str(tmp_path / "in.txt"), run=str(dep),
                output=str(tmp_path / "p.jsonl"))  # in-process: the CLI path is tested on images
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows] == ["line 1", "line 2", "line 4"]  # the empty one skipped
    assert [r["text"] for r in rows] == [docs[0], docs[1], docs[3]]  # decoded from latin-1

    from pretrainer.stages import serve

    srv, model = serve.make_server(dep, "127.0.0.1", 0)
    import threading

    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1/models/{model.name}:predict"
        req = urllib.request.Request(url, data=json.dumps(
            {"instances": [docs[0].replace("\xe9", "e"), docs[1], docs[3]]}).encode())
        with urllib.request.urlopen(req, timeout=60) as r:
            served = json.loads(r.read())["predictions"]
    finally:
        srv.shutdown()
        srv.server_close()
    assert [p["label"] for p in served][1:] == [r["label"] for r in rows][1:]
    assert np.allclose(served[1]["probabilities"], list(rows[1]["probabilities"].values()),
                       atol=1e-5)

    embed.run(compose("text_mlm", []), str(tmp_path / "in.txt"), run=str(pre))
    assert np.load(pre / "embeddings" / "in" / "embeddings.npy").shape == (3, 32)
    # a Wide & Deep finetune run: the pooled embedding, not the n-gram columns beside it
    embed.run(compose("text_mlm", []), str(tmp_path / "in.txt"), run=str(ft))
    assert np.load(ft / "embeddings" / "in" / "embeddings.npy").shape == (3, 32)


def test_seed_cnn_trunk_pretrains_and_finetunes(in_tmp):
    _stages("fashion_ae", ("pretrain", "finetune"),
            ["backbone=seed_cnn", *TINY[:5], "trainer.batch_size=64"])
    (ft,) = (in_tmp / "runs" / "fashion_ae").glob("finetune-*")
    assert (ft / "DONE").is_file()


def test_short_lines_train_a_shorter_transformer_pretrained_and_from_scratch(in_tmp):
    """backbone.fit_length: one short text per line sizes the sequence to the pool (8
    tokens here, not 32), in the pretrain run and in a scratch finetune alike."""
    tmp_path = in_tmp
    rng = np.random.default_rng(0)
    words = {"sport": ["match", "goal", "team", "score"], "food": ["bake", "salt", "cake", "oven"]}
    for name, vocab in words.items():
        lines = [" ".join(rng.choice(vocab, size=rng.integers(2, 6))) for _ in range(150)]
        (tmp_path / "lines" / name).mkdir(parents=True)
        (tmp_path / "lines" / name / "lines.txt").write_text("\n".join(lines) + "\n")
    data = ["data=text_files", f"data.path={tmp_path / 'lines'}", "data.text_split=line",
            "data.labeled_fraction=0.2", "data.max_samples=null", "data.max_test=null"]
    # pretrained on batches cut to their longest line, with XLA (auto: from 1,000 steps)
    _stages("text_mlm", ["pretrain", "finetune"], [*TEXT, *data],
            pretrain_extra=["trainer.jit_compile=true"])
    _stages("text_mlm", ["finetune"], [*TEXT, *data, "finetune.init=scratch"])
    exp = tmp_path / "runs" / "text_mlm"
    (pre,) = exp.glob("pretrain-*")
    assert json.loads((pre / "manifest.json").read_text())["sequence_length"] == 8
    import keras
    import tensorflow as tf

    assert keras.saving.load_model(pre / "backbone.keras").input_shape == (None, 8)

    fts = sorted(exp.glob("finetune-*"))
    assert len(fts) == 2
    for ft in fts:  # longer texts are cut, as at 64
        model = keras.saving.load_model(ft / "model.keras")
        assert model.get_layer("transformer").input_shape == (None, 8)
        assert model(tf.constant(["goal team", "a " * 50])).shape == (2, 2)
