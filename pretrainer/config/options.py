"""Backbone and pretext options: one settings class per kind, each checking its own keys.

A transformer has no `filters`, a convolutional encoder no `num_heads`: each option of
the `backbone` and `pretext` groups is a dataclass holding only the keys it reads (Hydra's
"one structured config per option", tutorial 5.1). `BACKBONES` and `PRETEXTS` map the
option's name to its class; the model registries (`pretrainer.models.BACKBONES`,
`pretrainer.pretext.PRETEXTS`) have the same names (tests/test_config.py holds them
together). Each class checks its ranges in `__post_init__` and, in `check(cfg)`, what it
needs from the other groups (the data source's modality, the transformer's block kind,
public weights): `Config` runs every check when it is composed, before any data is
collected.

A group's node is an untyped mapping in the Hydra schema (its keys depend on the option
chosen); `typed()` turns it into the option's class by its `name`, and Hydra's and
OmegaConf's errors about unknown keys name the option's own keys.

This module must not import TensorFlow or Keras (`pretrainer --help` stays fast).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, List, Mapping, Optional

from pretrainer.config.groups import check_range
from pretrainer.errors import ConfigError


@dataclass
class BackboneConfig:
    """The keys every backbone has."""
    name: str = "conv_ae"  # key of pretrainer.models.BACKBONES
    latent_dim: int = 128  # size of the embedding the backbone outputs

    MODALITY: ClassVar[str] = "image"  # the data it takes
    PUBLIC_WEIGHTS: ClassVar[bool] = False  # finetune.init=public can load ImageNet weights

    def __post_init__(self) -> None:
        if self.latent_dim < 1:
            raise ConfigError(f"Expected backbone.latent_dim >= 1. Received: {self.latent_dim}")

    def check(self, cfg) -> None:
        modality = cfg.data.modality
        if modality != self.MODALITY:
            fits = [n for n, c in BACKBONES.items() if c.MODALITY == modality]
            raise ConfigError(f"backbone '{self.name}' takes {self.MODALITY} data; data source "
                              f"'{cfg.data.source}' gives {modality}. Choose backbone="
                              f"{' or backbone='.join(fits)}")
        if cfg.finetune.init == "public" and not self.PUBLIC_WEIGHTS:
            public = [n for n, c in BACKBONES.items() if c.PUBLIC_WEIGHTS]
            raise ConfigError(f"finetune.init=public needs a backbone with public weights "
                              f"({', '.join(public)}); backbone '{self.name}' has none. Use "
                              f"backbone={' or backbone='.join(public)}, or init=pretrained")


def _positive(name: str, values: List[int], allow_empty: bool) -> None:
    if any(v < 1 for v in values) or (not values and not allow_empty):
        raise ConfigError(f"Expected {name} to be positive ints. Received: {values}")


@dataclass
class ConvConfig(BackboneConfig):
    """conv_ae (strided convolutions) and seed_cnn (conv-pool stacks)."""
    filters: List[int] = field(default_factory=lambda: [32, 64])  # conv widths, in order
    kernel_size: int = 3
    batch_norm: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("backbone.filters", self.filters, allow_empty=False)


@dataclass
class ApplicationConfig(BackboneConfig):
    """resnet and mobilenet from keras.applications."""
    name: str = "resnet"
    weights: Optional[str] = None  # null (random) or imagenet (downloads once)
    width: float = 1.0  # mobilenet: alpha
    # the mirrored decoder's widths and kernel when an autoencoder or a GAN trains it
    filters: List[int] = field(default_factory=lambda: [32, 64])
    kernel_size: int = 3

    PUBLIC_WEIGHTS: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("backbone.filters", self.filters, allow_empty=False)
        if self.width <= 0:
            raise ConfigError(f"Expected backbone.width > 0. Received: {self.width}")


@dataclass
class MLPConfig(BackboneConfig):
    """mlp: Dense layers for table rows; no hidden layers and latent_dim 0 = identity."""
    name: str = "mlp"
    filters: List[int] = field(default_factory=lambda: [64, 64])  # hidden units, in order
    latent_dim: int = 32  # 0: no embedding layer (the identity)

    MODALITY: ClassVar[str] = "tabular"

    def __post_init__(self) -> None:
        if self.latent_dim < 0:
            raise ConfigError(f"Expected backbone.latent_dim >= 0 (0 = identity). "
                              f"Received: {self.latent_dim}")
        _positive("backbone.filters", self.filters, allow_empty=True)


@dataclass
class TransformerConfig(BackboneConfig):
    """transformer: keras-hub blocks over WordPiece tokens (latent_dim is the width)."""
    name: str = "transformer"
    num_layers: int = 2
    num_heads: int = 4
    intermediate_dim: int = 256
    sequence_length: int = 64  # tokens per document (longer ones are cut)
    # size the sequence to the pool, when that is shorter: the 99th percentile of its
    # token counts, rounded up to a multiple of 8 (one text per line pays for 64 tokens
    # at ~14 each otherwise); the pretrain run records it, finetune and exports follow
    fit_length: bool = True
    vocabulary_size: int = 4000  # WordPiece vocabulary learned from the unlabeled split
    causal: bool = True  # decoder blocks with a causal mask (causal_lm) or encoder blocks

    MODALITY: ClassVar[str] = "text"

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("num_layers", "num_heads", "intermediate_dim", "sequence_length"):
            if getattr(self, key) < 1:
                raise ConfigError(f"Expected backbone.{key} >= 1. Received: {getattr(self, key)}")


BACKBONES: dict[str, type] = {"conv_ae": ConvConfig, "seed_cnn": ConvConfig,
                              "resnet": ApplicationConfig, "mobilenet": ApplicationConfig,
                              "mlp": MLPConfig, "transformer": TransformerConfig}


@dataclass
class PretextConfig:
    """The keys every pretext has."""
    name: str = "autoencoder"  # key of pretrainer.pretext.PRETEXTS
    learning_rate: float = 1e-3

    MODALITIES: ClassVar[tuple[str, ...]] = ("image",)  # the data it trains on

    def __post_init__(self) -> None:
        check_range("pretext.learning_rate", self.learning_rate, 0.0, 10.0, lo_open=True)

    def check(self, cfg) -> None:
        modality = cfg.data.modality
        if modality not in self.MODALITIES:
            fits = [n for n, c in PRETEXTS.items() if modality in c.MODALITIES]
            raise ConfigError(f"pretext '{self.name}' needs {' or '.join(self.MODALITIES)} "
                              f"data; data source '{cfg.data.source}' gives {modality}. "
                              f"Choose pretext={' or pretext='.join(fits)}")


@dataclass
class ReconstructionConfig(PretextConfig):
    """autoencoder and denoising: reproduce the clean input through the embedding."""
    noise_stddev: float = 0.0  # Gaussian input noise for denoising reconstruction
    mask_fraction: float = 0.0  # share of pixels zeroed for masked reconstruction

    MODALITIES: ClassVar[tuple[str, ...]] = ("image", "tabular")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("pretext.mask_fraction", self.mask_fraction, 0.0, 0.95)
        if self.noise_stddev < 0:
            raise ConfigError(f"Expected pretext.noise_stddev >= 0. Received: {self.noise_stddev}")


@dataclass
class SimCLRConfig(PretextConfig):
    """simclr: two augmented views, a projection head, the NT-Xent loss."""
    name: str = "simclr"
    temperature: float = 0.2  # NT-Xent temperature
    projection_dim: int = 64  # projection head output size
    zoom: float = 0.5  # views zoom in by up to this fraction of the image side
    # > 0 adds RotNet's loss (which of 4 quarter turns a view got) times this weight
    rotation_weight: float = 0.0
    # the share of each batch that the rotation loss sees (0.25: a quarter of a backbone
    # pass per step instead of a whole one)
    rotation_share: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("pretext.temperature", self.temperature, 0.0, 10.0, lo_open=True)
        check_range("pretext.zoom", self.zoom, 0.0, 0.9)
        check_range("pretext.rotation_weight", self.rotation_weight, 0.0, 100.0)
        check_range("pretext.rotation_share", self.rotation_share, 0.0, 1.0, lo_open=True)
        least = 4 if self.rotation_weight > 0 else 1
        if self.projection_dim < least:
            raise ConfigError(f"Expected pretext.projection_dim >= {least}. Received: "
                              f"{self.projection_dim}")


@dataclass
class DCGANConfig(PretextConfig):
    """dcgan: the backbone is the discriminator's trunk."""
    name: str = "dcgan"
    learning_rate: float = 2e-4


@dataclass
class LanguageModelConfig(PretextConfig):
    """causal_lm (next token, causal blocks) and masked_lm (BERT-style, encoder blocks)."""
    name: str = "masked_lm"

    MODALITIES: ClassVar[tuple[str, ...]] = ("text",)

    def check(self, cfg) -> None:
        super().check(cfg)
        causal = self.name == "causal_lm"
        if getattr(cfg.backbone, "causal", causal) != causal:
            raise ConfigError(f"pretext '{self.name}' needs backbone.causal="
                              f"{str(causal).lower()}")


PRETEXTS: dict[str, type] = {"autoencoder": ReconstructionConfig,
                             "denoising": ReconstructionConfig, "simclr": SimCLRConfig,
                             "causal_lm": LanguageModelConfig, "masked_lm": LanguageModelConfig,
                             "dcgan": DCGANConfig}
_GROUP_OPTIONS = {"backbone": BACKBONES, "pretext": PRETEXTS}


def option_class(group: str, name: str) -> type:
    options = _GROUP_OPTIONS[group]
    if name not in options:
        raise ConfigError(f"Unknown {group} '{name}'. Choose from: {', '.join(options)}")
    return options[name]


def keys_of(group: str, name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(option_class(group, name))]


def typed(group: str, node: Any, default: str, drop_unknown: bool = False):
    """A group's mapping (from YAML, overrides or a run's config.yaml) as its option's
    class, picked by `name`, with OmegaConf's type checks. `drop_unknown`: keys the option
    does not have are left out (run records written before the options had classes of
    their own carry every group's keys); otherwise they are an error naming the option's
    keys."""
    from omegaconf import OmegaConf

    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return node
    values = dict(node or {}) if isinstance(node, Mapping) else OmegaConf.to_container(node)
    name = str(values.get("name") or default)
    cls = option_class(group, name)
    keys = keys_of(group, name)
    unknown = [k for k in values if k not in keys]
    if unknown and not drop_unknown:
        raise ConfigError(f"Unknown key '{group}.{unknown[0]}' for {group} '{name}'. Valid "
                          f"keys: {', '.join(keys)}")
    values = {k: v for k, v in values.items() if k in keys}
    values["name"] = name
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), values))
    except ConfigError:
        raise
    except Exception as exc:  # OmegaConf's validation errors: a wrong type for a key
        key = getattr(exc, "full_key", "") or ""
        where = f"{group}.{key}" if key else group
        raise ConfigError(f"{where}: {str(exc).strip().splitlines()[0]}") from exc
