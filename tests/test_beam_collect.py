"""collect on Apache Beam's local runner writes the store the in-process path writes:
the same manifest, splits, record order and shard checksums, byte for byte."""

import csv
import filecmp
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("apache_beam")

from pretrainer.config import compose  # noqa: E402
from pretrainer.errors import ConfigError, DataError  # noqa: E402

CLI = [sys.executable, "-m", "pretrainer"]


def _same_tree(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert len(names) > 5  # the manifest and several shards per store
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors, mismatch or errors


def _collect(config: str, overrides: list[str], data: Path, runner: list[str]) -> Path:
    from pretrainer.stages import collect

    cfg = compose(config, [*overrides, f"paths.data={data}", *runner])
    return Path(collect.run(cfg))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """2,000 PNGs in 3 class folders (spaces and brackets in the names), one corrupt file,
    and 20 exact copies of other images (contamination for data.dedupe)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("beam") / "photos [2026]"
    for c, name in enumerate(["cat s", "dog [1]", "emu"]):
        d = root / name
        d.mkdir(parents=True)
        for i in range(666 + (c == 0) * 2):
            img = (rng.random((12, 10, 3)) * 80 + c * 80).astype(np.uint8)
            Image.fromarray(img).save(d / f"img {i:04d}.png")
    for i in range(20):
        (root / "emu" / f"copy {i}.png").write_bytes((root / "emu" / f"img {i:04d}.png")
                                                     .read_bytes())
    (root / "emu" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def test_image_folder_store_is_identical_on_beam(image_folder, tmp_path):
    """As a user runs it: two `pretrainer collect` commands; Beam with 2 worker processes
    and 10 shards per split, data.dedupe on (digests computed by the workers)."""
    common = ["collect", "-c", "folder_ae", f"data.path='{image_folder}'",
              "data.image_size=[8,8]", "data.shard_size=150", "data.dedupe=true"]
    env = {**os.environ, "NO_COLOR": "1"}
    ours = subprocess.run([*CLI, *common, f"paths.data={tmp_path / 'a'}"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert ours.returncode == 0, ours.stderr[-2000:]
    beam = subprocess.run([*CLI, *common, f"paths.data={tmp_path / 'b'}",
                           "collect.runner=beam", "collect.workers=2"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert beam.returncode == 0, beam.stderr[-2000:]
    out = beam.stdout + beam.stderr
    assert "skipped 1 unreadable file(s): emu/broken.png" in " ".join(out.split())
    _same_tree(tmp_path / "a" / "image_folder", tmp_path / "b" / "image_folder")
    import json

    manifest = json.loads((tmp_path / "b" / "image_folder" / "manifest.json").read_text())
    found = manifest["contamination"]  # copies of test images found by digest, and dropped
    assert found["deduped"] and found["unlabeled_in_test"] > 0
    test, pool = manifest["splits"]["test"]["count"], manifest["splits"]["unlabeled"]["count"]
    assert test + pool + manifest["splits"]["val"]["count"] == 2000 + 20 - \
        found["unlabeled_in_test"]
    assert len(manifest["splits"]["unlabeled"]["shards"]) >= 9


def _texts(root: Path) -> Path:
    random.seed(1)
    words = "alpha beta gamma delta épée naïve café zeta eta theta".split()
    for c in ["news [a]", "sport s", "misc"]:
        d = root / c
        d.mkdir(parents=True)
        for f in range(5):
            lines = [" ".join(random.choice(words) for _ in range(random.randint(3, 12)))
                     for _ in range(120)]
            codec = {0: "latin-1", 1: "utf-16"}.get(f, "utf-8")
            (d / f"file {f}.txt").write_bytes("\n".join(lines).encode(codec))
    return root


@pytest.mark.parametrize("rule", ["stratified", "hash"])
def test_text_folder_store_is_identical_on_beam(tmp_path, rule):
    root = _texts(tmp_path / "texts")
    args = ["data=text_files", f"data.path={root}", "data.text_split=line",
            "data.labeled_fraction=0.1", "data.shard_size=200", "collect.workers=2",
            f"data.split_rule={rule}"]
    a = _collect("text_mlm", args, tmp_path / "a", [])
    b = _collect("text_mlm", args, tmp_path / "b", ["collect.runner=beam"])
    _same_tree(a, b)


@pytest.mark.parametrize("rule", ["stratified", "hash"])
def test_csv_store_is_identical_on_beam(tmp_path, rule):
    random.seed(2)
    path = tmp_path / "table.csv"
    with open(path, "w", newline="", encoding="latin-1") as f:
        w = csv.writer(f)
        w.writerow(["size", "colour", "note", "kind"])
        for i in range(1200):
            w.writerow([f"{random.random() * 10:.3f}" if i % 37 else "",
                        random.choice(["red", "grün", "blue"]),
                        random.choice(["a", "b, quoted", "multi\nline"]),
                        random.choice(["x", "y", "z"]) if i % 50 else ""])
    args = ["data=csv", f"data.path={path}", "data.target=kind", "data.shard_size=100",
            f"data.split_rule={rule}"]
    a = _collect("house_linear", args, tmp_path / "a", [])
    b = _collect("house_linear", args, tmp_path / "b", ["collect.runner=beam",
                                                        "collect.workers=2"])
    _same_tree(a, b)


def test_image_folder_store_under_the_hash_rule_is_identical_on_beam(image_folder, tmp_path,
                                                                     monkeypatch):
    """data.split_rule=hash: the launcher streams (hashsplit.py, beam_hash.py); the store is
    still the in-process one, file for file; copies never straddle test and the pool.
    Small planner chunks and bucket buffers, so both are cut many times here."""
    from pretrainer.data import beam_hash

    monkeypatch.setattr(beam_hash, "CHUNK_RECORDS", 300)
    monkeypatch.setattr(beam_hash, "BUFFERED_LINES", 97)
    args = [f"data.path='{image_folder}'", "data.image_size=[8,8]", "data.shard_size=150",
            "data.dedupe=true", "data.split_rule=hash", "data.labels_per_class=5"]
    a = _collect("folder_ae", args, tmp_path / "a", [])
    b = _collect("folder_ae", args, tmp_path / "b", ["collect.runner=beam",
                                                     "collect.workers=2"])
    _same_tree(a, b)
    import json

    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["skipped"]["count"] == 1 and manifest["split_rule"] == "hash"
    assert manifest["contamination"]["unlabeled_in_test"] == 0  # copies share a split
    splits = manifest["splits"]
    assert set(splits["train"]["per_class"].values()) == {5}
    assert sum(s["count"] for s in splits.values()) - splits["train"]["count"] == 2020
    assert sum(s["count"] for s in splits["unlabeled"]["shards"]) == splits["unlabeled"]["count"]


def _pngs(folder: Path, n: int, shade: int, rng) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(n):
        img = (rng.random((6, 6)) * 60 + shade).astype(np.uint8)
        Image.fromarray(img, "L").save(folder / f"{i} [x].png")


@pytest.mark.parametrize("layout", ["splits", "flat"])
def test_other_folder_layouts_under_the_hash_rule_are_identical_on_beam(tmp_path, layout):
    """train/test folders (a corrupt test file, max_test, data.extra_unlabeled with a corrupt
    file) and an unlabeled flat folder (max_samples): the caps, the source's own test split
    and the extra unlabeled images on both paths."""
    rng = np.random.default_rng(5)
    root = tmp_path / "src"
    if layout == "splits":
        for part, n in (("train", 150), ("test", 40)):
            for c, name in enumerate(["a", "b c"]):
                _pngs(root / part / name, n, 60 * c, rng)
        (root / "test" / "a" / "bad.png").write_bytes(b"nope")
        for i in range(5):  # test images that are also in the pool: found and dropped
            (root / "test" / "a" / f"dup {i}.png").write_bytes(
                (root / "train" / "a" / f"{i} [x].png").read_bytes())
        _pngs(tmp_path / "more [u]", 30, 30, rng)
        (tmp_path / "more [u]" / "bad.png").write_bytes(b"nope")
        extra = ["data.max_test=60", "data.labels_per_class=3", "data.dedupe=true",
                 f"data.extra_unlabeled='{tmp_path / 'more [u]'}'"]
    else:  # loose images at the top: unlabeled, whatever the folders under it
        _pngs(root, 200, 0, rng)
        _pngs(root / "y" / "z", 200, 100, rng)
        extra = ["data.max_samples=300"]
    args = [f"data.path={root}", "data.image_size=[6,6]", "data.shard_size=64",
            "data.split_rule=hash", *extra]
    a = _collect("folder_ae", args, tmp_path / "a", [])
    b = _collect("folder_ae", args, tmp_path / "b", ["collect.runner=beam",
                                                     "collect.workers=2"])
    _same_tree(a, b)
    import json

    splits = json.loads((b / "manifest.json").read_text())["splits"]
    if layout == "splits":
        assert 40 <= splits["test"]["count"] <= 60
        manifest = json.loads((b / "manifest.json").read_text())
        found = manifest["contamination"]
        assert 0 < found["unlabeled_in_test"] <= 5 and found["deduped"]
        assert manifest["source"]["extra_unlabeled"]["count"] == 30
        assert manifest["skipped"]["count"] == 2
    else:
        assert splits["unlabeled"]["count"] == 300 and splits["test"]["count"] == 0


@pytest.mark.parametrize("folder", ["local", "ram://buckets"])
def test_bucket_lines_reach_their_files_in_order(tmp_path, monkeypatch, folder):
    """The launcher's bounded buffer: appended locally, one piece per flush on a store
    that cannot append (TensorFlow's ram:// filesystem stands in for gs://)."""
    from pretrainer.data import beam_hash
    from pretrainer.data.store import _gfile

    monkeypatch.setattr(beam_hash, "BUFFERED_LINES", 4)
    buckets = beam_hash.Buckets(str(tmp_path / "b") if folder == "local" else folder)
    sent = {}
    for i in range(30):
        key = ("train", i % 3)
        buckets.add(*key, f"line {i}")
        sent.setdefault(key, []).append(f"line {i}")
    buckets.flush()
    for key, lines in sent.items():
        got = []
        for piece in buckets.pieces[key]:
            with _gfile().GFile(piece, "r") as f:
                got += f.read().splitlines()
        assert got == lines
    assert (len(buckets.pieces[("train", 0)]) == 1) == (folder == "local")


def test_a_file_changed_between_scan_and_write_is_an_error(tmp_path):
    from pretrainer.data import beam

    path = tmp_path / "a.txt"
    path.write_text("one\ntwo\n")
    task = {"split": "train", "file": "train-00000-of-00001.tfrecord", "staging": str(tmp_path),
            "modality": "text", "regression": False, "labels": [0, 1], "root": str(tmp_path),
            "how": "line", "encoding": "auto", "refs": [[str(path), 0], [str(path), 1]],
            "digests": [beam.digest(b"one"), beam.digest(b"two")]}
    beam.write_shard(task)
    assert (tmp_path / "train-00000-of-00001.tfrecord").stat().st_size > 0
    path.write_text("one\nthree\n")
    with pytest.raises(DataError, match="changed while collect ran"):
        beam.write_shard(task)


def test_beam_runner_is_refused_for_sources_it_cannot_read():
    with pytest.raises(ConfigError, match="image_folder, text_files, csv"):
        compose("fashion_ae", ["collect.runner=beam"])
    with pytest.raises(ConfigError, match="--name=value"):
        compose("fashion_ae", ['collect.options=["project=x"]'])


def test_without_apache_beam_collect_says_how_to_install_it(monkeypatch):
    from pretrainer.data import beam

    monkeypatch.setitem(sys.modules, "apache_beam", None)  # import fails as if absent
    with pytest.raises(DataError, match=r"pip install 'pretrainer\[beam\]'"):
        beam.require_beam()
