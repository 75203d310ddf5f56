import pytest

from pretrainer.config import compose
from pretrainer.stages.study import _arms


def test_study_arms_share_the_recipe_and_add_a_labels_only_baseline():
    plain = _arms(compose("fashion_ae"))
    assert [a[0] for a in plain] == ["pretrained", "scratch"]
    semi = _arms(compose("fashion_ae", ["finetune.semi_supervised=fixmatch",
                                        "study.linear_probe=true"]))
    assert semi == [("pretrained", "pretrained", "full", "fixmatch"),
                    ("scratch", "scratch", "full", "fixmatch"),
                    ("scratch_labels_only", "scratch", "full", "none"),
                    ("linear_probe", "pretrained", "linear_probe", "none")]


@pytest.mark.parametrize("modality", ["image", "text", "tabular"])
def test_the_classical_baseline_learns_from_the_labeled_split_only(tmp_path, modality):
    """Fitted on train (C chosen on val), scored on test, saved as evaluate_run layout."""
    import numpy as np

    from pretrainer import baselines
    from pretrainer.config import DataConfig
    from pretrainer.data.sources import SourceData
    from pretrainer.data.store import build_store, read_manifest
    from pretrainer.scoring import example_scores

    rng = np.random.default_rng(0)
    y = np.arange(400) % 2
    if modality == "image":
        x = rng.integers(0, 100, (400, 6, 6, 1), dtype=np.uint8)
        x[y == 1, :3] += 150  # class 1: a bright top half
        src = SourceData(x_pool=x, y_pool=y, class_names=["dark", "bright"])
    elif modality == "text":
        words = np.array(["good great fine", "awful bad poor"])
        x = np.array([f"{w} {i}" for i, w in enumerate(words[y])], dtype=object)
        src = SourceData(x_pool=x, y_pool=y, class_names=["pos", "neg"], modality="text")
    else:
        from pretrainer.data import sources

        a, b = rng.normal(size=400) + 3 * y, rng.normal(size=400)
        (tmp_path / "t.csv").write_text("a,b,colour,label\n" + "".join(
            f"{u:.3f},{v:.3f},{'red' if k else 'blue'},{'yes' if k else 'no'}\n"
            for u, v, k in zip(a, b, y, strict=True)))
        src = sources.load(DataConfig(source="csv", path=str(tmp_path / "t.csv"),
                                      target="label"))
    build_store(tmp_path / "s", DataConfig(labeled_fraction=0.25, val_fraction=0.1,
                                           test_fraction=0.25), 0, src)
    manifest = read_manifest(tmp_path / "s")
    result = baselines.fit_and_score(tmp_path / "s", manifest)
    assert result["samples"] == manifest.count("test")
    assert result["accuracy"] > 0.9, result
    saved = baselines.save(result, tmp_path / "classical")
    assert example_scores(saved).mean() == pytest.approx(result["accuracy"])


def test_large_images_are_block_averaged_for_the_pixel_baseline():
    import numpy as np

    from pretrainer.data.modalities.image import downsample as _downsample

    x = np.arange(2 * 100 * 64 * 3, dtype=np.float32).reshape(2, 100, 64, 3)
    small = _downsample(x)
    assert small.shape == (2, 25, 16, 3)  # factor 4: at most 32 a side
    np.testing.assert_allclose(small[0, 0, 0], x[0, :4, :4].mean(axis=(0, 1)))
    assert _downsample(x[:, :28, :28]).shape == (2, 28, 28, 3)


def test_comparisons_include_pretrained_minus_labels_only():
    from pretrainer.stages.study import compare

    cells = [{"fraction": 6, "seed": s, "arm": arm, "accuracy": acc + 0.01 * s}
             for s in range(3) for arm, acc in (("pretrained", 0.75), ("scratch", 0.76),
                                                ("scratch_labels_only", 0.66))]
    got = {c["arm"]: c for c in compare(cells)}
    assert set(got) == {"pretrained", "scratch_labels_only", "pretrained - scratch_labels_only"}
    assert got["pretrained - scratch_labels_only"]["verdict"].startswith("+9.0 points")


def test_the_classical_baseline_fits_a_tiny_separable_table(tmp_path):
    """21 rows: gradient boosting's default 20-row leaves cannot split them (it scored
    56.7 % on such a table); the size-aware candidates, chosen on val, can."""
    import numpy as np

    from pretrainer import baselines
    from pretrainer.config import DataConfig
    from pretrainer.data import sources
    from pretrainer.data.store import build_store, read_manifest

    rng = np.random.default_rng(1)
    y = np.arange(60) % 2
    a = rng.normal(size=60) + 4 * y  # separable on column a
    (tmp_path / "t.csv").write_text("a,b,label\n" + "".join(
        f"{u:.3f},{v:.3f},{'yes' if k else 'no'}\n"
        for u, v, k in zip(a, rng.normal(size=60), y, strict=True)))
    src = sources.load(DataConfig(source="csv", path=str(tmp_path / "t.csv"), target="label"))
    build_store(tmp_path / "s", DataConfig(labeled_fraction=0.5, val_fraction=0.2,
                                           test_fraction=0.25), 0, src)
    manifest = read_manifest(tmp_path / "s")
    assert manifest.count("train") < 30
    result = baselines.fit_and_score(tmp_path / "s", manifest)
    assert result["accuracy"] >= 0.9, result
    assert "on val" in result["chosen"]
