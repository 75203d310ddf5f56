"""pretrainer study: every cell, the plot, and a killed study that resumes."""

import json
from pathlib import Path

import pytest
from conftest import interrupt_on_call

from pretrainer import runs
from pretrainer.config import compose
from pretrainer.errors import RunError
from pretrainer.stages import evaluate, study

pytestmark = pytest.mark.e2e

TINY = ["data.max_samples=200", "data.max_test=40", "trainer.epochs=1", "finetune.epochs=1",
        "trainer.verbose=false", "backbone.filters=[8,16]", "backbone.latent_dim=16",
        "study.fractions=[0.05,0.2]", "study.seeds=1"]  # (the probe arm and the interval over
# several seeds: test_study_arms; one seed here takes the paired bootstrap)


def test_study_cells_plot_and_resume(in_tmp, monkeypatch):
    cfg = compose("fashion_ae", TINY)
    real = evaluate.run
    interrupt_on_call(monkeypatch, evaluate, "run", 3)
    with pytest.raises(KeyboardInterrupt):
        study.run(cfg)
    (out,) = (in_tmp / "runs" / "fashion_ae").glob("study-*")
    first = json.loads((out / "study.json").read_text())["cells"]
    # (pretrained, scratch, the frozen-embedding arms, classical) at 0.05; killed in the
    # next fraction
    arms = ["pretrained", "scratch", "frozen_knn", "frozen_logreg", "frozen_spreading",
            "classical"]
    assert [c["arm"] for c in first] == arms

    monkeypatch.setattr(evaluate, "run", real)
    again = study.run(compose("fashion_ae", TINY))
    assert again.resolve() == out.resolve()  # the same study, continued
    state = json.loads((out / "study.json").read_text())
    assert state["cells"][:6] == first
    assert len(state["cells"]) == 2 * 6  # fractions x arms
    assert {s["arm"] for s in state["summary"]} == set(arms)
    classical = [c for c in state["cells"] if c["arm"] == "classical"]
    assert all(c["model"] == "logistic regression on pixels" and 0 <= c["accuracy"] <= 1
               for c in classical)
    assert (out / "label_efficiency.png").stat().st_size > 1000
    md = (out / "study.md").read_text()
    assert "| 0.05 |" in md and (out / "DONE").is_file() and "| pretrained - classical |" in md
    labels = {(c["fraction"], c["seed"]): c["labels"] for c in state["cells"]}
    assert labels[(0.05, 0)] < labels[(0.2, 0)]
    # every cell is scored on the same test examples; only the labeled draw moves
    import numpy as np

    ys = [np.load(Path(c["evaluate_run"]) / "predictions.npz")["y_true"] for c in state["cells"]]
    assert all(np.array_equal(ys[0], y) for y in ys)
    # each arm minus scratch, with a paired-bootstrap interval (one seed)
    assert {c["arm"] for c in state["comparisons"]} == {
        "pretrained", "pretrained - classical", "frozen_knn", "frozen_logreg",
        "frozen_spreading"}
    assert all("CI" in c["verdict"] for c in state["comparisons"])
    # study cells are never "the latest finetune run" of the experiment
    with pytest.raises(RunError, match="No finished finetune run"):
        runs.latest_run(in_tmp / "runs", "fashion_ae", "finetune")
    # cell stores link the experiment's unlabeled shards instead of copying them
    cell_stores = [p for p in (in_tmp / "data").iterdir() if "-study-" in p.name]
    assert cell_stores
    for store in cell_stores:
        for shard in store.glob("unlabeled-*.tfrecord"):
            assert shard.stat().st_nlink > 1
