import pytest

from pretrainer.config import Config, compose, from_yaml, list_experiments, to_yaml
from pretrainer.errors import ConfigError


def test_every_shipped_experiment_composes():
    for name in list_experiments():
        cfg = compose(name)
        assert isinstance(cfg, Config)
        assert cfg.experiment == name
        assert cfg.deploy.name


def test_cifar_cnn_is_the_seed_recipe():
    cfg = compose("cifar_cnn")
    assert cfg.backbone.name == "seed_cnn"
    assert cfg.backbone.filters == [32, 64, 64] and cfg.backbone.latent_dim == 64
    assert cfg.finetune.loss == "categorical_crossentropy"
    assert cfg.trainer.epochs == 10 and cfg.trainer.batch_size == 64
    assert cfg.finetune.init == "scratch"


def test_override_changes_value_and_type_is_checked():
    assert compose("fashion_ae", ["trainer.epochs=3"]).trainer.epochs == 3
    with pytest.raises(ConfigError, match="epochs"):
        compose("fashion_ae", ["trainer.epochs=three"])


def test_unknown_key_names_valid_keys():
    with pytest.raises(ConfigError) as err:
        compose("fashion_ae", ["trainer.epoch=3"])
    assert "trainer.epoch" in str(err.value)
    assert "batch_size" in str(err.value) and "epochs" in str(err.value)


def test_unknown_group_option_lists_choices():
    with pytest.raises(ConfigError) as err:
        compose("fashion_ae", ["backbone=cnnn"])
    assert "conv_ae" in str(err.value) and "seed_cnn" in str(err.value)


@pytest.mark.parametrize("override,match", [
    ("data.labeled_fraction=2", "labeled_fraction"),
    ("data.labeled_fraction=0", "labeled_fraction"),
    ("finetune.init=magic", "pretrained, scratch"),
    ("finetune.wide=bag", "none, ngrams"),
    ("finetune.head_l2=-1", "head_l2"),
    ("trainer.strategy=tpu9", "auto, cpu"),
    ("trainer.batch_size=0", "batch_size"),
    ("finetune.prior=propagation", "semi_supervised=fixmatch"),
    ("finetune.prior=knn", "none, propagation"),
    ("finetune.prior_decay=2", "prior_decay"),
])
def test_ranges_and_choices_are_validated(override, match):
    with pytest.raises(ConfigError, match=match):
        compose("fashion_ae", [override])


def test_yaml_round_trip():
    cfg = compose("digits_ae", ["seed=7"])
    again = from_yaml(to_yaml(cfg))
    assert again == cfg


@pytest.mark.parametrize("override", ["+trainer.epochz=3", "+foo=1", "hydra.run.dir=x",
                                      "~trainer.epochs"])
def test_overrides_hydra_would_silently_ignore_are_rejected(override):
    with pytest.raises(ConfigError, match="not supported|not read"):
        compose("fashion_ae", [override])


def test_a_yaml_syntax_error_names_the_line_that_broke(tmp_path):
    from pretrainer.config import compose
    from pretrainer.errors import ConfigError

    (tmp_path / "mine.yaml").write_text("defaults:\n  - pretrainer_schema\n  - data: "
                                        "fashion_bundled\ntrainer:\n  epochs: 3\n - batch_size: 4\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error in .*mine.yaml, line 6, column 2"):
        compose("mine", [], str(tmp_path))


# --- backbone and pretext options: one settings class each, checked when composed ---

def test_each_option_has_its_own_keys():
    from pretrainer.config import ConvConfig, SimCLRConfig, TransformerConfig

    text = compose("text_mlm")
    assert isinstance(text.backbone, TransformerConfig)
    assert not hasattr(text.backbone, "filters") and not hasattr(text.backbone, "kernel_size")
    image = compose("fashion_simclr")
    assert isinstance(image.backbone, ConvConfig) and isinstance(image.pretext, SimCLRConfig)
    assert not hasattr(image.backbone, "num_heads")
    assert "filters" not in to_yaml(text) and "temperature" not in to_yaml(text)


@pytest.mark.parametrize("config,override,words", [
    ("text_mlm", "backbone.filters=[8]", ["'backbone.filters'", "transformer", "num_heads"]),
    ("fashion_ae", "pretext.temperature=0.5", ["'pretext.temperature'", "autoencoder",
                                               "noise_stddev"]),
    ("fashion_ae", "backbone.filterz=[8]", ["'backbone.filterz'", "conv_ae", "kernel_size"]),
])
def test_a_key_the_chosen_option_lacks_names_that_options_keys(config, override, words):
    with pytest.raises(ConfigError) as err:
        compose(config, [override])
    assert all(w in str(err.value) for w in words), str(err.value)


@pytest.mark.parametrize("config,overrides,match", [
    ("fashion_ae", ["backbone=transformer"], "takes text data.*gives image.*backbone=conv_ae"),
    ("fashion_ae", ["pretext=masked_lm"], "needs text data.*pretext=simclr"),
    ("text_mlm", ["data=csv"], "takes text data.*gives tabular.*backbone=mlp"),
    ("text_lm", ["backbone.causal=false"], "backbone.causal=true"),
    ("text_mlm", ["finetune.semi_supervised=fixmatch"], "needs image classification"),
    ("fashion_ae", ["finetune.wide=ngrams"], "for text classifiers"),
    ("fashion_ae", ["finetune.init=public"], "public weights.*resnet, mobilenet"),
    ("text_mlm", ["data.extra_unlabeled=/tmp"], "adds image folders"),
    ("fashion_ae", ["backbone.latent_dim=abc"], "backbone.latent_dim"),
    ("fashion_ae", ["data.source=ftp"], "data.source='ftp' is not valid"),
    ("folder_ae", ["collect.runner=beam", "data.extra_unlabeled=/tmp"],
     "data.extra_unlabeled with data.split_rule=hash only"),
    ("fashion_ae", ["data.split_rule=random"], "data.split_rule='random' is not valid"),
])
def test_settings_that_cannot_work_together_fail_when_composed(config, overrides, match):
    """Checked before anything is collected: compose itself refuses."""
    with pytest.raises(ConfigError, match=match):
        compose(config, overrides)


def test_options_that_fit_compose():
    assert compose("folder_ae", ["collect.runner=beam", "data.extra_unlabeled=/tmp",
                                 "data.split_rule=hash"]).data.split_rule == "hash"
    cfg = compose("fashion_ae", ["backbone=resnet", "finetune.init=public"])
    assert cfg.backbone.PUBLIC_WEIGHTS and cfg.backbone.filters  # the decoder's widths
    assert compose("house_linear").backbone.latent_dim == 0  # mlp: 0 = identity


def test_a_run_recorded_with_every_options_keys_still_reads():
    """config.yaml files written before the options had classes carry every key."""
    old = to_yaml(compose("text_mlm")).replace(
        "backbone:\n", "backbone:\n  filters: [32, 64]\n  kernel_size: 3\n  batch_norm: true\n"
        "  weights: null\n  width: 1.0\n").replace(
        "pretext:\n", "pretext:\n  noise_stddev: 0.0\n  temperature: 0.2\n  zoom: 0.5\n")
    assert "filters" in old
    assert from_yaml(old) == compose("text_mlm")


def test_the_settings_registries_name_the_same_options_as_the_model_registries():
    from pretrainer.config.groups import SOURCE_MODALITY
    from pretrainer.config.options import BACKBONES, PRETEXTS
    from pretrainer.data.sources import SOURCES
    from pretrainer.models import BACKBONES as BUILDERS
    from pretrainer.pretext import PRETEXTS as TASKS

    assert set(BACKBONES) == set(BUILDERS) and set(PRETEXTS) == set(TASKS)
    assert set(SOURCE_MODALITY) == set(SOURCES)


@pytest.mark.parametrize("config,override,get", [
    ("fashion_simclr", "pretext.zoom=0.2", lambda c: c.pretext.zoom == 0.2),
    ("text_mlm", "backbone.fit_length=false", lambda c: c.backbone.fit_length is False),
    ("fashion_ae", "backbone=resnet", lambda c: c.backbone.weights is None),
])
def test_an_options_key_its_yaml_leaves_at_the_default_can_be_set(config, override, get):
    """The option files list a few keys; every key of the option's class can be set."""
    assert get(compose(config, [override]))
    cfg = compose("fashion_ae", ["backbone=resnet", "backbone.filters=[8,16]"])
    assert cfg.backbone.filters == [8, 16]
