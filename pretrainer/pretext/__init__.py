"""Pretext registry: `pretext.name` -> a task that trains a backbone without labels.

Each entry builds a compiled Keras model around the backbone and says how to turn a
batch of unlabeled inputs into (inputs, targets), and which logged metric is the
label-free health signal. Which data each one takes and what it needs from the backbone
is its settings class's to check (`pretrainer.config.options`) when the config is
composed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import keras

from pretrainer.errors import ConfigError
from pretrainer.pretext.adversarial import build_dcgan
from pretrainer.pretext.contrastive import build_simclr
from pretrainer.pretext.language import (
    build_causal_lm,
    build_masked_lm,
    causal_targets,
    masked_targets,
)
from pretrainer.pretext.reconstruction import build_autoencoder


def _no_target(x):
    import tensorflow as tf

    return x, tf.zeros(tf.shape(x)[:1])


@dataclass(frozen=True)
class Pretext:
    build: Callable[..., keras.Model]  # (backbone, PretextConfig, BackboneConfig, seed, **compile)
    targets: Callable  # batch of inputs -> (inputs, targets)
    health: str  # metric name logged each epoch (history.csv, TensorBoard)
    embedding_rank: bool = False  # log the backbone's effective rank, alarm on collapse
    samples: str = ""  # images saved in the run: reconstructions | generated
    # text: (vocabulary size, sequence length) -> the targets map, when it needs them
    targets_for: Optional[Callable] = None


PRETEXTS: dict[str, Pretext] = {
    "autoencoder": Pretext(build=build_autoencoder, targets=lambda x: (x, x), health="psnr",
                           samples="reconstructions"),
    "denoising": Pretext(build=build_autoencoder, targets=lambda x: (x, x), health="psnr",
                         samples="reconstructions"),
    "simclr": Pretext(build=build_simclr, targets=_no_target, health="effective_rank",
                      embedding_rank=True),
    "causal_lm": Pretext(build=build_causal_lm, targets=causal_targets, health="perplexity"),
    "masked_lm": Pretext(build=build_masked_lm, targets=None, health="perplexity",
                         targets_for=lambda vocab, length: masked_targets(vocab, length)),
    "dcgan": Pretext(build=build_dcgan, targets=_no_target, health="d_accuracy",
                     embedding_rank=True, samples="generated"),
}


def get_pretext(name: str) -> Pretext:
    if name not in PRETEXTS:
        raise ConfigError(f"Unknown pretext '{name}'. Choose from: {', '.join(PRETEXTS)}")
    return PRETEXTS[name]
