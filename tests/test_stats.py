import numpy as np

from pretrainer.stats import paired_bootstrap, seed_interval, verdict


def test_paired_bootstrap_covers_zero_for_one_example_of_two_hundred():
    # pipeline once printed "pretraining gained 0.5 accuracy points" from this
    a = np.ones(200)
    b = np.ones(200)
    b[0] = 0
    ci = paired_bootstrap(a, b)
    assert ci["mean"] == 0.005 and ci["low"] <= 0 <= ci["high"]
    assert verdict(ci).endswith("within noise")


def test_a_clear_gain_is_not_within_noise():
    rng = np.random.default_rng(0)
    a = (rng.random(2000) < 0.8).astype(float)
    b = (rng.random(2000) < 0.6).astype(float)
    ci = paired_bootstrap(a, b)
    assert 0.15 < ci["low"] < ci["mean"] < ci["high"] < 0.25
    assert "within noise" not in verdict(ci)


def test_seed_interval_needs_two_seeds():
    assert seed_interval([0.02]) is None
    ci = seed_interval([0.02, 0.03, 0.025])
    assert ci["low"] < 0.025 < ci["high"] and "3 seeds" in ci["method"]
