"""Pretext registry: `pretext.name` -> a task that trains a backbone without labels.

Each entry builds a compiled Keras model around the backbone and says how to turn
a batch of unlabeled inputs into (inputs, targets), and which logged metric is
the label-free health signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras

from pretrainer.errors import ConfigError
from pretrainer.pretext.reconstruction import build_autoencoder


@dataclass(frozen=True)
class Pretext:
    build: Callable[..., keras.Model]  # (backbone, PretextConfig, BackboneConfig, seed, **compile)
    targets: Callable  # batch of inputs -> (inputs, targets)
    health: str  # metric name logged each epoch (history.csv, TensorBoard)
    modality: str


PRETEXTS: dict[str, Pretext] = {
    "autoencoder": Pretext(build=build_autoencoder, targets=lambda x: (x, x),
                           health="psnr", modality="image"),
}


def get_pretext(name: str) -> Pretext:
    if name not in PRETEXTS:
        raise ConfigError(f"Unknown pretext '{name}'. Choose from: {', '.join(PRETEXTS)}")
    return PRETEXTS[name]
