"""Label-free health signals logged during pretraining."""

from __future__ import annotations

import keras
import numpy as np

from pretrainer.console import warn


def effective_rank(features: np.ndarray) -> float:
    """exp(entropy) of the normalised singular values: 1 = collapsed, dim = spread out."""
    f = np.asarray(features, np.float64)
    f = f - f.mean(axis=0, keepdims=True)
    s = np.linalg.svd(f, compute_uv=False)
    if s.sum() <= 1e-12:
        return 1.0
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


class EmbeddingRank(keras.callbacks.Callback):
    """Log `effective_rank` of the backbone's embeddings of a fixed batch; warn on collapse."""

    def __init__(self, backbone: keras.Model, images: np.ndarray, min_fraction: float = 0.05):
        super().__init__()
        self.backbone, self.images, self.min_fraction = backbone, images, min_fraction

    def on_epoch_end(self, epoch, logs=None):
        feats = np.asarray(self.backbone(self.images, training=False), np.float32)
        rank = effective_rank(feats)
        if logs is not None:
            logs["effective_rank"] = rank
        floor = max(2.0, self.min_fraction * min(feats.shape))
        if rank < floor:
            warn(f"embedding collapse: effective rank {rank:.2f} of {feats.shape[1]} dimensions "
                 f"(alarm below {floor:.1f}); lower the learning rate or strengthen the views")
