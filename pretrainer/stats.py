"""Uncertainty of a comparison: is model A better than model B on this test split?

Two ways, by what there is to resample: with one run per arm, a paired bootstrap over
the test examples (both models scored on the same examples); with several seeds per
arm, the spread of the per-seed differences (Student's t). scikit-learn has no paired
comparison of two models' scores, hence this small module.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, n: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Mean of a - b (per-example scores, e.g. 1/0 correct or -squared error) with a
    `level` percentile interval from `n` resamples of the examples."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError("paired_bootstrap needs two score vectors over the same examples")
    d = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(n)
    for i in range(0, n, 256):  # resample in chunks: memory stays ~256 x examples
        k = min(256, n - i)
        means[i:i + k] = d[rng.integers(0, len(d), size=(k, len(d)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"mean": float(d.mean()), "low": float(lo), "high": float(hi), "level": level,
            "method": f"paired bootstrap over {len(d)} test examples ({n} resamples)"}


def seed_interval(diffs: list[float], level: float = 0.95) -> Optional[dict]:
    """Mean of per-seed differences with a t interval; None with fewer than 2 seeds."""
    from scipy import stats

    d = np.asarray(diffs, np.float64)
    if len(d) < 2:
        return None
    half = stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return {"mean": float(d.mean()), "low": float(d.mean() - half),
            "high": float(d.mean() + half), "level": level,
            "method": f"t interval over {len(d)} seeds"}


def verdict(ci: dict, scale: float = 100.0, unit: str = "points") -> str:
    """'+2.1 points (95% CI +0.4 to +3.8)' or '... : within noise' when the CI covers 0."""
    text = (f"{ci['mean'] * scale:+.1f} {unit} ({ci['level']:.0%} CI {ci['low'] * scale:+.1f} "
            f"to {ci['high'] * scale:+.1f}, {ci['method']})")
    return text + (": within noise" if ci["low"] <= 0 <= ci["high"] else "")
