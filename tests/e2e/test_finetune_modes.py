"""finetune.mode decides what trains; schedules and class weights take effect."""

import keras
import numpy as np
import pytest

from pretrainer.config import FinetuneConfig, TrainerConfig, compose
from pretrainer.errors import ConfigError
from pretrainer.stages import finetune, pretrain

pytestmark = pytest.mark.e2e

TINY = ["data.max_samples=300", "data.max_test=60", "trainer.epochs=1", "finetune.epochs=2",
        "trainer.verbose=false", "backbone.filters=[8,16]", "backbone.latent_dim=16"]


def test_linear_probe_keeps_the_backbone_frozen_and_full_moves_it(in_tmp):
    pre = pretrain.run(compose("fashion_ae", TINY))
    backbone = keras.saving.load_model(pre / "backbone.keras")
    before = backbone.get_weights()
    for mode, moved in (("linear_probe", False), ("full", True),
                        ("full backbone_lr_multiplier=0", False)):
        extra = [f"finetune.mode={mode.split()[0]}"] + [
            f"finetune.{kv}" for kv in mode.split()[1:]]
        ft = finetune.run(compose("fashion_ae", [*TINY, *extra]), run=pre)
        model = keras.saving.load_model(ft / "model.keras")
        inner = model.get_layer("conv_ae")
        # trainable weights only: BatchNorm's moving statistics follow the data in any mode
        names = [w.path for w in backbone.weights]
        trainable = {w.path for w in backbone.trainable_weights}
        changed = any(not np.allclose(a, b) for n, a, b in zip(
            names, before, inner.get_weights(), strict=True) if n in trainable)
        assert changed == moved, mode
        if mode == "linear_probe":  # only the head (kernel + bias) trains
            assert len(model.trainable_weights) == 2


def test_class_weights_and_schedule():
    from pretrainer.data.records import StoreManifest

    manifest = StoreManifest.from_json({"modality": "image", "class_names": ["a", "b"], "splits": {
        "train": {"count": 30, "per_class": {"a": 10, "b": 20}}}})
    weights = finetune._class_weight(FinetuneConfig(class_weight="balanced"), manifest)
    assert weights == {0: 1.5, 1: 0.75}
    cfg = compose("fashion_ae")
    lr = finetune._learning_rate(FinetuneConfig(schedule="cosine", warmup_epochs=1, epochs=4,
                                                batch_size=10, learning_rate=0.1),
                                 3, cfg)
    values = [float(lr(step)) for step in (0, 3, 10, 39)]
    assert values[0] < values[1] <= 0.1 + 1e-7 and values[3] < values[2]
    assert isinstance(TrainerConfig().epochs, int)


def test_gradual_unfreezing_thaws_from_the_top(in_tmp):
    pre = pretrain.run(compose("fashion_ae", TINY))
    backbone = keras.saving.load_model(pre / "backbone.keras")
    ft = finetune.run(compose("fashion_ae", [*TINY, "finetune.mode=gradual",
                                             "finetune.unfreeze_every=1"]), run=pre)
    inner = keras.saving.load_model(ft / "model.keras").get_layer("conv_ae")
    # epoch 1: all frozen (head only); epoch 2: the top block (the embedding) thaws
    for layer, moved in (("embedding", True), ("conv1_s1", False), ("bn1_s1", False),
                         ("conv0_s2", False)):
        same = all(np.array_equal(a, b) for a, b in zip(
            backbone.get_layer(layer).get_weights(), inner.get_layer(layer).get_weights(),
            strict=True))
        assert same != moved, layer
    history = (ft / "history.csv").read_text().splitlines()
    col = history[0].split(",").index("thawed_blocks")
    assert [float(r.split(",")[col]) for r in history[1:]] == [0.0, 1.0]


def test_fixmatch_uses_the_unlabeled_pool_and_saves_a_plain_classifier(in_tmp):
    cfg = compose("fashion_ae", [*TINY, "finetune.init=scratch",
                                 "finetune.semi_supervised=fixmatch", "finetune.confidence=0.0",
                                 "finetune.steps_per_epoch=3", "finetune.epochs=1"])
    ft = finetune.run(cfg)
    header, row = (ft / "history.csv").read_text().splitlines()[:2]
    logs = dict(zip(header.split(","), map(float, row.split(",")), strict=True))
    assert logs["confident_share"] == 1.0 and logs["unlabeled_loss"] > 0
    assert "val_confident_share" not in logs and "val_accuracy" in logs
    model = keras.saving.load_model(ft / "model.keras")
    assert model.name == "classifier"
    probs = model.predict(np.zeros((2, 28, 28, 1), np.float32), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("args,needle", [
    (["finetune.init=public"], "backbone=resnet"),
    (["finetune.init=public", "backbone=resnet"], "32x32"),
    (["finetune.semi_supervised=fixmatch", "finetune.init=scratch", "--config", "text_mlm"],
     "image classification"),
])
def test_unusable_finetune_choices_are_one_line_errors(in_tmp, args, needle):
    from tests.conftest import run_cli

    env = {"KERAS_HOME": str(in_tmp / "keras"), "HTTPS_PROXY": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9"}
    tiny = TINY if "text_mlm" not in args else TINY[:5]  # no conv keys for a transformer
    proc = run_cli(["finetune", *args, *tiny], cwd=in_tmp, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-1500:]
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    if "32x32" not in needle:  # refused before a run directory is made
        assert not list(in_tmp.glob("runs/*/finetune-*"))


def test_public_weights_offline_is_a_one_line_config_error(monkeypatch, tmp_path):

    from pretrainer.errors import ConfigError

    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", _offline_get_file)
    cfg = compose("fashion_ae", ["finetune.init=public", "backbone=mobilenet"])
    with pytest.raises(ConfigError) as err:
        finetune._public_backbone(cfg, (32, 32, 1))
    msg = str(err.value)
    assert "MobileNetV2" in msg and "finetune.init=pretrained" in msg and "\n" not in msg


def _offline_get_file(*args, **kwargs):
    raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                    "[Errno -3] Temporary failure in name resolution")


def test_ema_momentum_ends_on_the_moving_average(in_tmp):
    pre = pretrain.run(compose("fashion_ae", TINY))
    start = keras.saving.load_model(pre / "backbone.keras").trainable_weights
    moved = {}
    for extra in ([], ["finetune.ema_momentum=0.9999999"]):
        ft = finetune.run(compose("fashion_ae", [*TINY, "finetune.epochs=3",
                                                 "finetune.steps_per_epoch=10", *extra]), run=pre)
        inner = keras.saving.load_model(ft / "model.keras").get_layer("conv_ae")
        moved[bool(extra)] = sum(float(np.abs(np.asarray(a) - np.asarray(b)).sum())
                                 for a, b in zip(start, inner.trainable_weights, strict=True))
    # Keras starts the average at the weights after the first step, then it barely moves
    assert 0 < moved[True] < 0.25 * moved[False]


def test_fixmatch_takes_prior_pseudo_labels_from_the_pretrained_features(in_tmp):
    import json

    from pretrainer import frozen

    pre = pretrain.run(compose("fashion_ae", TINY))
    semi = [*TINY, "finetune.semi_supervised=fixmatch", "finetune.prior=propagation",
            "finetune.prior_decay=0.5", "finetune.steps_per_epoch=3", "finetune.epochs=1"]
    for init in ("pretrained", "scratch"):  # scratch: a random network guided by the prior
        ft = finetune.run(compose("fashion_ae", [*semi, f"finetune.init={init}"]), run=pre)
        manifest = json.loads((ft / "manifest.json").read_text())
        assert manifest["parent_run"] == str(pre.resolve())
        facts = manifest["prior"]
        assert facts["graph_k"] in frozen.GRAPH_K_GRID and facts["pool"] > 100
        assert 0.0 <= facts["val_accuracy"] <= 1.0
        model = keras.saving.load_model(ft / "model.keras")
        assert model.name == "classifier"  # the prior is not part of the saved model
        assert not any("prior" in layer.name for layer in model.layers)
    # the graph over another layer's features (conv_ae's trunk before its embedding)
    flat = compose("fashion_ae", [*semi, "finetune.prior_layer=flatten",
                                  "finetune.self_supervised_weight=1"])  # + DoubleMatch's term
    ft = finetune.run(flat, run=pre)
    assert "prior" in json.loads((ft / "manifest.json").read_text())
    assert "ssl_loss" in (ft / "history.csv").read_text()
    # study's and pipeline's frozen arms score the features the prior is built on
    from pretrainer.data.store import read_manifest, store_path
    from pretrainer.stages.embed import featurizer, frozen_layer

    manifest = read_manifest(store_path(flat))
    assert frozen_layer(flat, manifest) == "flatten"
    x = np.zeros((2, *manifest.shape), "float32")
    assert featurizer(pre, manifest, "flatten")(x).shape[1] > featurizer(pre, manifest)(x).shape[1]
    assert "flatten features" in frozen.describe("logreg", "flatten")
    with pytest.raises(ConfigError, match="not a layer of the backbone. Choose from: .*flatten"):
        finetune.run(compose("fashion_ae", [*semi, "finetune.prior_layer=nope"]), run=pre)
