import json

import numpy as np
import pytest
from PIL import Image

from pretrainer.config import DataConfig
from pretrainer.data import sources
from pretrainer.data.folders import detect_layout
from pretrainer.data.store import build_store
from pretrainer.errors import DataError


def _img(path, color, size=(20, 16), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[..., :] = color
    arr[::3] += 40
    im = Image.fromarray(arr).convert(mode)
    im.save(path)


def make_class_folder(root, per_class=12, mode="RGB"):
    for name, color in ({"cats": (200, 30, 30), "dogs": (30, 200, 30),
                                       "owls": (30, 30, 200)}.items()):
        for i in range(per_class):
            ext = ["png", "jpg", "bmp"][i % 3]
            _img(root / name / f"{i}.{ext}", color, mode=mode)
    return root


def test_class_folders_with_broken_files_are_skipped_and_counted(tmp_path):
    root = make_class_folder(tmp_path / "imgs")
    good = (root / "cats" / "1.jpg").read_bytes()
    (root / "cats" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "dogs" / "empty.png").write_bytes(b"")
    (root / "dogs" / "notes.png").write_text("not an image")
    (root / "owls" / "readme.txt").write_text("ignored: not an image extension")
    (root / "empty_class").mkdir()
    assert detect_layout(root) == "classes"
    src = sources.load(DataConfig(source="image_folder", path=str(root), image_size=[8, 10]))
    assert src.x_pool.shape == (36, 8, 10, 3)
    assert src.class_names == ["cats", "dogs", "owls"]
    assert np.bincount(src.y_pool).tolist() == [12, 12, 12]
    assert sorted(s["file"] for s in src.skipped) == [
        "cats/truncated.jpg", "dogs/empty.png", "dogs/notes.png"]
    assert src.info["empty_class_folders"] == ["empty_class"]
    manifest = build_store(tmp_path / "store", DataConfig(val_fraction=0.1, test_fraction=0.25,
                                                          labeled_fraction=0.5), 0, src)
    assert manifest.skipped["count"] == 3
    assert manifest.count("test") == 9
    assert json.loads((tmp_path / "store" / "manifest.json").read_text())["shape"] == [8, 10, 3]


def test_grayscale_folder_is_detected(tmp_path):
    root = make_class_folder(tmp_path / "g", per_class=3, mode="L")
    src = sources.load(DataConfig(source="image_folder", path=str(root), image_size=[8, 8]))
    assert src.x_pool.shape == (9, 8, 8, 1)
    forced = sources.load(DataConfig(source="image_folder", path=str(root), image_size=[8, 8],
                                     color="rgb"))
    assert forced.x_pool.shape == (9, 8, 8, 3)


def test_train_test_layout_becomes_the_splits(tmp_path):
    make_class_folder(tmp_path / "d" / "train", per_class=6)
    make_class_folder(tmp_path / "d" / "test", per_class=2)
    make_class_folder(tmp_path / "d" / "val", per_class=1)
    assert detect_layout(tmp_path / "d") == "splits"
    src = sources.load(DataConfig(source="image_folder", path=str(tmp_path / "d"),
                                  image_size=[8, 8]))
    assert len(src.x_pool) == 18 and len(src.x_test) == 6 and len(src.x_val) == 3
    m = build_store(tmp_path / "s", DataConfig(labeled_fraction=0.5), 0, src)
    assert m.count("test") == 6 and m.count("val") == 3
    assert m.count("unlabeled") == 18


def test_flat_folder_is_unlabeled_only_and_extra_unlabeled_adds_to_pool(tmp_path):
    for i in range(7):
        _img(tmp_path / "flat" / f"sub{i % 2}" / f"x{i}.png", (i * 30, 0, 0))
    _img(tmp_path / "flat" / "top.png", (0, 0, 0))
    assert detect_layout(tmp_path / "flat") == "flat"
    src = sources.load(DataConfig(source="image_folder", path=str(tmp_path / "flat"),
                                  image_size=[8, 8]))
    assert src.y_pool is None and len(src.x_pool) == 8
    m = build_store(tmp_path / "s", DataConfig(), 0, src)
    assert m.count("unlabeled") == 8 and m.count("train") == 0

    labeled = make_class_folder(tmp_path / "lab", per_class=4)
    src = sources.load(DataConfig(source="image_folder", path=str(labeled), image_size=[8, 8],
                                  extra_unlabeled=str(tmp_path / "flat")))
    m = build_store(tmp_path / "s2", DataConfig(val_fraction=0.0, test_fraction=0.25), 0, src)
    assert m.count("unlabeled") == 9 + 8


@pytest.mark.parametrize("setup,match", [
    (lambda p: None, "not a folder"),
    (lambda p: p.mkdir(), "No images"),
    (lambda p: (p / "only").mkdir(parents=True) or _img(p / "only" / "a.png", (1, 2, 3)),
     "need at least 2"),
])
def test_bad_folders_are_clear_errors(tmp_path, setup, match):
    root = tmp_path / "x"
    setup(root)
    with pytest.raises(DataError, match=match):
        sources.load(DataConfig(source="image_folder", path=str(root)))


def test_missing_path_is_a_clear_error():
    with pytest.raises(DataError, match="data.path"):
        sources.load(DataConfig(source="image_folder"))


def test_worker_processes_decode_the_same_images_in_the_same_order(tmp_path):
    """Large folders decode in forked workers (before TensorFlow loads): same pixels, same
    order, same skipped files as decoding in one process, with hidden folders ignored."""
    root = make_class_folder(tmp_path / "imgs", per_class=40)
    (root / "cats" / "broken.png").write_bytes(b"\x89PNG not really")
    _img(root / ".thumbs" / "x.png", (1, 2, 3))
    code = f"""
import sys
from pathlib import Path
import numpy as np
from pretrainer.data import folders
assert "tensorflow" not in sys.modules
folders.PARALLEL_MIN_FILES, folders.CHUNK = 10, 7  # many chunks, out-of-order finishes
root = Path({str(root)!r})
files = folders._images_under(root)
assert not any(".thumbs" in str(f) for f in files) and len(files) == 121
assert folders._pool(2, len(files)) is not None
one = folders.load_images(files, (8, 8), "RGB", root, workers=1)
two = folders.load_images(files, (8, 8), "RGB", root, workers=2, label="decode")
assert np.array_equal(one[0], two[0]) and one[1] == two[1] and one[2] == two[2], "differ"
assert [s["file"] for s in two[2]] == ["cats/broken.png"] and len(two[1]) == 120
import tensorflow  # noqa: F401 - once TensorFlow is loaded, no forks
assert folders._pool(2, len(files)) is None
print("ok")
"""
    from conftest import run_python

    result = run_python(code)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
    assert "decode: 121 images in" in result.stdout


def test_an_image_past_the_decompression_bomb_limit_is_skipped_and_named(tmp_path,
                                                                         monkeypatch):
    root = make_class_folder(tmp_path / "imgs", per_class=4)
    _img(root / "owls" / "huge.png", (0, 0, 0), size=(40, 40))  # 1,600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # bombs: above 1,000 pixels
    src = sources.load(DataConfig(source="image_folder", path=str(root), image_size=[8, 8]))
    assert len(src.x_pool) == 12
    (skip,) = src.skipped
    assert skip["file"] == "owls/huge.png" and "decompression-bomb" in skip["reason"]


def test_symlink_loops_are_passed_over(tmp_path):
    root = make_class_folder(tmp_path / "imgs", per_class=4)
    (root / "cats" / "loop").symlink_to(root / "cats")  # (collect died: Errno 40)
    (root / "dogs" / "self.png").symlink_to(root / "dogs" / "self.png")
    (root / "owls" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    src = sources.load(DataConfig(source="image_folder", path=str(root), image_size=[8, 8]))
    assert np.bincount(src.y_pool).tolist() == [4, 4, 4]
