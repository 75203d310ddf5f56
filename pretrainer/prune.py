"""Magnitude pruning for Keras 3 models, kept in this one small module.

Why our own: tensorflow-model-optimization's pruning wraps tf_keras layers and
rejects Keras 3 models. The method here is the classic one: zero the smallest
|w| of every Dense/Conv kernel to the target sparsity, then finetune briefly
with the zeros re-applied after every step so they stay zero.
"""

from __future__ import annotations

import keras
import numpy as np


def _kernels(model: keras.Model) -> list:
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out += _kernels(layer)
        elif getattr(layer, "kernel", None) is not None and len(layer.kernel.shape) >= 2:
            out.append(layer.kernel)
    return out


def magnitude_masks(model: keras.Model, sparsity: float) -> list[tuple]:
    """[(kernel variable, 0/1 mask)] zeroing the `sparsity` smallest |w| of each kernel."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"Expected sparsity in [0, 1). Received: sparsity={sparsity}")
    masks = []
    for kernel in _kernels(model):
        w = np.abs(keras.ops.convert_to_numpy(kernel))
        k = int(round(sparsity * w.size))
        mask = np.ones_like(w, dtype=np.float32)
        if k > 0:
            mask.reshape(-1)[np.argsort(w, axis=None)[:k]] = 0.0
        masks.append((kernel, mask))
    return masks


def apply_masks(masks: list[tuple]) -> None:
    for kernel, mask in masks:
        kernel.assign(keras.ops.convert_to_numpy(kernel) * mask.astype(kernel.dtype))


def sparsity(model: keras.Model) -> float:
    """Share of exactly-zero weights over all Dense/Conv kernels."""
    sizes = zeros = 0
    for kernel in _kernels(model):
        w = keras.ops.convert_to_numpy(kernel)
        sizes += w.size
        zeros += int((w == 0).sum())
    return zeros / max(sizes, 1)


class KeepPruned(keras.callbacks.Callback):
    """Re-zero pruned weights after every training step."""

    def __init__(self, masks: list[tuple]):
        super().__init__()
        self.masks = masks

    def on_train_batch_end(self, batch, logs=None):
        apply_masks(self.masks)


def prune(model: keras.Model, target: float, train_ds=None, steps_per_epoch: int = 0,
          epochs: int = 0, learning_rate: float = 1e-4) -> float:
    """Prune `model` in place (and finetune it when `train_ds` is given); return the sparsity."""
    masks = magnitude_masks(model, target)
    apply_masks(masks)
    if train_ds is not None and epochs > 0:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=model.loss,
                      metrics=["accuracy"])
        model.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=0,
                  callbacks=[KeepPruned(masks)], shuffle=False)
        apply_masks(masks)
    return sparsity(model)
