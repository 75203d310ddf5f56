"""Explainability maps for image classifiers: saliency and integrated gradients.

tf-explain and similar packages target Keras 2 (tf.keras) and are unmaintained,
so the two methods are written here in a few lines of GradientTape:

- saliency (Simonyan et al. 2014): |d p_class / d x|, maximum over channels;
- integrated gradients (Sundararajan et al. 2017): (x - x0) times the mean
  gradient along the straight path from a black image x0 to x; the attributions
  sum to p_class(x) - p_class(x0) (completeness), which the tests check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from pretrainer import files

METHODS = ("integrated_gradients", "saliency")


def _grads(model, x: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    with tf.GradientTape() as tape:
        tape.watch(x)
        probs = tf.cast(model(x, training=False), tf.float32)
        picked = tf.gather(probs, target, batch_dims=1)
    return tape.gradient(picked, x)


def attributions(model, x: np.ndarray, target: np.ndarray, method: str = "integrated_gradients",
                 steps: int = 64) -> np.ndarray:
    """Per-pixel attributions shaped like x (signed for integrated gradients)."""
    x = tf.constant(np.asarray(x, np.float32))
    target = tf.constant(np.asarray(target, np.int64))
    if method == "saliency":
        return np.abs(_grads(model, x, target).numpy())
    baseline = tf.zeros_like(x)
    total = tf.zeros_like(x)
    # trapezoid rule over `steps` segments of the path baseline -> x
    for i, alpha in enumerate(np.linspace(0.0, 1.0, steps + 1)):
        g = _grads(model, baseline + float(alpha) * (x - baseline), target)
        total += g * (0.5 if i in (0, steps) else 1.0)
    return ((x - baseline) * total / steps).numpy()


def pick(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Up to n indices: half correctly classified, half misclassified (the rest from
    whichever group has more), in test-split order."""
    right, wrong = np.flatnonzero(pred == y), np.flatnonzero(pred != y)
    k_wrong = min(len(wrong), n // 2)
    k_right = min(len(right), n - k_wrong)
    k_wrong = min(len(wrong), n - k_right)
    return np.concatenate([right[:k_right], wrong[:k_wrong]]).astype(np.int64)


def grid_png(images: np.ndarray, maps: np.ndarray, titles: list[str], path: Path,
             method: str) -> None:
    """Two rows per group of up to 8 examples: the image, then its map over a grey copy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    n = len(images)
    cols = min(8, n)
    groups = -(-n // cols)
    fig, axes = plt.subplots(2 * groups, cols, figsize=(1.6 * cols, 3.4 * groups),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        r, c = 2 * (i // cols), i % cols
        img = images[i]
        shown = img[..., 0] if img.shape[-1] == 1 else img
        axes[r, c].imshow(shown, cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1)
        axes[r, c].set_title(titles[i], fontsize=7)
        heat = np.abs(maps[i]).max(axis=-1)
        gray = img.mean(axis=-1)
        axes[r + 1, c].imshow(gray, cmap="gray", vmin=0, vmax=1)
        axes[r + 1, c].imshow(heat / max(float(heat.max()), 1e-12), cmap="inferno", alpha=0.6)
    fig.suptitle(f"{method.replace('_', ' ')} (top: image, true → predicted; bottom: map)",
                 fontsize=9)
    fig.tight_layout()
    files.atomic_write_with(path, lambda p: fig.savefig(p, format="png", dpi=100), suffix=".png")
    plt.close(fig)
