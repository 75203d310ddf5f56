import numpy as np
import pytest

from pretrainer.config import DataConfig
from pretrainer.data import pipeline, sources
from pretrainer.data.store import build_store
from pretrainer.errors import ConfigError, DataError


def _write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))


def test_text_class_folders_with_a_latin1_file(tmp_path):
    for i in range(6):
        _write(tmp_path / "t" / "sport" / f"{i}.txt", f"match {i} ended two to one\n")
        _write(tmp_path / "t" / "food" / f"{i}.txt", f"recipe {i}: bake for an hour\n")
    _write(tmp_path / "t" / "food" / "latin1.txt", "recipe: crème brûlée", encoding="latin-1")
    src = sources.load(DataConfig(source="text_files", path=str(tmp_path / "t")))
    assert src.modality == "text" and src.class_names == ["food", "sport"]
    assert len(src.x_pool) == 13 and np.bincount(src.y_pool).tolist() == [7, 6]
    assert "recipe: crème brûlée" in list(src.x_pool)  # read as latin-1/cp1252, not skipped
    assert src.info["files_by_encoding"] == {"utf-8": 12, "cp1252": 1}
    assert not src.skipped
    strict = sources.load(DataConfig(source="text_files", path=str(tmp_path / "t"),
                                     encoding="utf-8"))
    (skip,) = strict.skipped  # an explicit codec skips what it cannot read, and says so
    assert skip["file"] == "food/latin1.txt" and "not utf-8" in skip["reason"]
    m = build_store(tmp_path / "s", DataConfig(labeled_fraction=0.5, val_fraction=0.0,
                                               test_fraction=0.5), 0, strict)
    assert m.modality == "text" and m.skipped["count"] == 1
    texts, labels = pipeline.to_numpy(pipeline.texts(tmp_path / "s", "test", batch_size=4))
    assert len(texts) == 6 and all(t.decode().split()[0] in ("match", "recipe") for t in texts)
    for t, y in zip(texts, labels, strict=True):
        assert (t.decode().startswith("match")) == (src.class_names[y] == "sport")


def test_latin1_csv_and_an_all_nan_target(tmp_path):
    _write(tmp_path / "t.csv", "ville,surface,prix\nNîmes,10,20\nSète,20,40\nAgde,30,60\n",
           encoding="latin-1")
    src = sources.load(DataConfig(source="csv", path=str(tmp_path / "t.csv"), target="prix"))
    assert src.info["encoding"] == "cp1252" and len(src.x_pool) == 3
    _write(tmp_path / "n.csv", "a,b\n1,NaN\n2,nan\n3,\n")
    with pytest.raises(DataError, match="target column 'b' of n.csv has no values: all 3 rows"):
        sources.load(DataConfig(source="csv", path=str(tmp_path / "n.csv"), target="b"))


@pytest.mark.parametrize("how,expected", [
    ("file", ["a\nb\n%\nc d"]), ("line", ["a", "b", "%", "c d"]), ("^%$", ["a\nb", "c d"]),
])
def test_text_split_modes(tmp_path, how, expected):
    _write(tmp_path / "one.txt", "a\nb\n%\nc d\n")
    src = sources.load(DataConfig(source="text_files", path=str(tmp_path), text_split=how))
    assert src.y_pool is None and list(src.x_pool) == expected


def test_bad_text_split_regex_is_a_config_error(tmp_path):
    _write(tmp_path / "one.txt", "x")
    with pytest.raises(ConfigError, match="regular expression"):
        sources.load(DataConfig(source="text_files", path=str(tmp_path), text_split="(["))


def test_bundled_text_is_real_fortunes(tmp_path):
    src = sources.load(DataConfig(source="bundled_text", dataset="fortunes_small"))
    assert src.class_names == ["art", "computers", "food", "literature", "science"]
    assert len(src.x_pool) > 900
    m = build_store(tmp_path / "f", DataConfig(labeled_fraction=0.1), 0, src)
    assert m.count("train") > 50 and m.count("test") > 150
    (batch,) = list(pipeline.texts(tmp_path / "f", "unlabeled", batch_size=4096, labels=False))
    assert batch.dtype.name == "string" and len(batch) == m.count("unlabeled")


CSV = """area,rooms,city,price
50,2,Oslo,100
80,,Bergen,160
120,4,Oslo,240
200,5,,400
"""


def test_csv_numeric_categorical_and_missing_values(tmp_path):
    (tmp_path / "h.csv").write_text(CSV)
    src = sources.load(DataConfig(source="csv", path=str(tmp_path / "h.csv"), target="price",
                                  task="regression"))
    assert src.modality == "tabular" and src.task == "regression"
    # area, rooms (missing -> mean 11/3), city one-hot over {"", Bergen, Oslo}
    assert src.x_pool.shape == (4, 5)
    assert src.x_pool[1, 1] == pytest.approx(11 / 3)
    np.testing.assert_array_equal(src.x_pool[3, 2:], [1, 0, 0])
    np.testing.assert_array_equal(src.y_pool, [100, 160, 240, 400])
    m = build_store(tmp_path / "s", DataConfig(val_fraction=0.0, test_fraction=0.25,
                                               labeled_fraction=1.0), 0, src)
    assert m.task == "regression" and m.num_classes == 0
    assert m.feature_names[:2] == ("area", "rooms")
    x, y = pipeline.to_numpy(pipeline.rows(tmp_path / "s", "train", batch_size=8))
    assert x.shape == (3, 5) and y.dtype == np.float32
    # standardised with the pool's statistics
    np.testing.assert_allclose(x.mean(axis=0)[0], 0.0, atol=1e-5)


def test_csv_classification_target_and_missing_target_column(tmp_path):
    rows = "\n".join(f"{i},{i % 3},{'ab'[i % 2]}" for i in range(30))
    (tmp_path / "c.csv").write_text("x,kind,tag\n" + rows + "\n")
    src = sources.load(DataConfig(source="csv", path=str(tmp_path / "c.csv"), target="kind"))
    assert src.task == "classification" and src.class_names == ["0", "1", "2"]
    with pytest.raises(DataError, match="Columns: x, kind, tag"):
        sources.load(DataConfig(source="csv", path=str(tmp_path / "c.csv"), target="price"))
    unlabeled = sources.load(DataConfig(source="csv", path=str(tmp_path / "c.csv")))
    assert unlabeled.y_pool is None and unlabeled.x_pool.shape == (30, 4)


def test_ragged_csv_is_a_clear_error(tmp_path):
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(DataError, match="row"):
        sources.load(DataConfig(source="csv", path=str(tmp_path / "bad.csv")))


def test_text_contamination_is_found(tmp_path):
    src = sources.SourceData(
        x_pool=np.array([f"doc {i}" for i in range(20)], dtype=object),
        y_pool=np.arange(20) % 2, class_names=["a", "b"], modality="text",
        x_test=np.array(["doc 3", "new"], dtype=object), y_test=np.array([1, 0]))
    m = build_store(tmp_path / "s", DataConfig(val_fraction=0.0), 0, src)
    assert m.contamination["unlabeled_in_test"] == 1


def test_imdb_offline_is_a_clear_error(monkeypatch):
    import keras

    def offline(*a, **k):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.datasets.imdb, "load_data", offline)
    with pytest.raises(DataError, match="imdb"):
        sources.load(DataConfig(source="keras", dataset="imdb"))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-8-sig"])
def test_text_with_a_byte_order_mark_is_read_in_its_codec(tmp_path, encoding):
    from pretrainer.data import inputs
    from pretrainer.data.textfiles import decode

    text = "crème brûlée\nnaïve café\n"
    bom = {"utf-16-be": b"\xfe\xff"}.get(encoding, b"")  # Python writes BE without one
    raw = bom + text.encode(encoding)
    assert decode(raw)[0].lstrip("\ufeff") == text  # not NUL-interleaved cp1252
    (tmp_path / "in.txt").write_bytes(raw)
    lines = [line for _, line in inputs._lines(tmp_path / "in.txt")]
    assert [line.lstrip("\ufeff") for line in lines] == ["crème brûlée", "naïve café"]
