"""The typed manifests: what a reader gets from an old or a current manifest.json."""

import json

import numpy as np
import pytest

from pretrainer import runs
from pretrainer.data.records import StoreManifest
from pretrainer.data.store import read_manifest
from pretrainer.errors import DataError
from pretrainer.records import RunManifest


def test_a_format_1_store_manifest_reads_as_classification_with_empty_table_keys(tmp_path):
    old = {"name": "toy", "modality": "image", "shape": [4, 4, 1], "num_classes": 2,
           "class_names": ["a", "b"],
           "splits": {"train": {"count": 3, "labeled": True, "per_class": {"a": 1, "b": 2},
                                "shards": [{"file": "train-0.tfrecord", "count": 3,
                                            "sha256": "00"}]}}}
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    m = read_manifest(tmp_path)
    assert m.format_version == 1 and m.task == "classification" and not m.regression
    assert m.shape == (4, 4, 1) and m.example_shape == (4, 4, 1)
    assert m.count("train") == 3 and m.count("unlabeled") == 0  # a split it lacks: 0
    assert m.per_class("train") == {"a": 1, "b": 2} and m.per_class("val") == {}
    assert m.splits["train"].shards[0].file == "train-0.tfrecord"
    assert m.columns == () and m.feature_stats is None and m.feature_names == ()
    with pytest.raises(TypeError):
        m.splits["val"] = None  # read-only: a reader cannot change what others see


def test_a_table_store_manifest_carries_its_statistics_and_round_trips_its_splits():
    m = StoreManifest.from_json({
        "format_version": 3, "modality": "tabular", "task": "regression", "shape": [2],
        "feature_stats": {"mean": [1.0, 2.0], "std": [0.5, 1.0]},
        "feature_names": ["x", "y"], "columns": [{"column": "x", "kind": "numeric"}],
        "splits": {"test": {"count": 5, "labeled": True, "shards": []}}})
    assert m.regression and m.width == 2 and m.example_shape == (2,)
    np.testing.assert_array_equal(m.feature_stats.std, [0.5, 1.0])
    assert m.splits["test"].to_json() == {"count": 5, "labeled": True, "per_class": {},
                                          "shards": []}
    assert StoreManifest.from_json({"modality": "text", "splits": {}}).example_shape is None


def test_a_manifest_that_is_json_but_not_a_store_manifest_is_one_data_error(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"splits": {}}))  # no modality
    with pytest.raises(DataError, match="not a store manifest"):
        read_manifest(tmp_path)


def test_a_run_manifest_reads_lineage_and_results_and_keeps_unknown_keys(tmp_path):
    parent = tmp_path / "pretrain-1"
    parent.mkdir()
    (tmp_path / "x").mkdir()
    runs.write_lineage(tmp_path / "x", "finetune", "seed: 0\n", parent=parent)
    runs.update_manifest(tmp_path / "x", init="pretrained", final_metrics={"val_accuracy": 0.5},
                         something_new=[1, 2])
    m = runs.read_manifest(tmp_path / "x")
    assert m.stage == "finetune" and m.init == "pretrained" and m.resumed == 0
    assert m.parent == parent.resolve() and m.is_child_of(parent)
    assert m.final_metrics == {"val_accuracy": 0.5} and m.artifacts == {}
    assert m.raw["something_new"] == [1, 2]
    assert runs.read_manifest(tmp_path / "no-such-run") == RunManifest()  # an empty record
