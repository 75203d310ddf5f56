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
