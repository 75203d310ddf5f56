"""`pretrainer init`: one experiment file per dataset, found by every verb afterwards."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pretrainer import scaffold
from pretrainer.cli import app
from pretrainer.config import compose
from pretrainer.errors import ConfigError, DataError


def _images(root):
    for cls in ("boots [winter]", "sandals"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((12, 10, 3), 40 * i, np.uint8)).save(root / cls / f"{i}.png")


def test_init_writes_an_experiment_every_verb_then_composes(tmp_path, monkeypatch):
    _images(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["init", "shoes", "--data", "photos"])
    assert out.exit_code == 0, out.output
    assert "6 images in class folders boots [winter], sandals" in " ".join(out.output.split())
    assert "pretrainer pipeline -c shoes" in out.output
    cfg = compose("shoes")  # from ./experiments, as `pretrainer collect -c shoes` does
    assert cfg.data.source == "image_folder" and cfg.data.path == str(tmp_path / "photos")
    assert cfg.experiment == "shoes" and cfg.data.name == "shoes"
    assert cfg.backbone.name == "conv_ae"  # the shipped folder_ae recipe
    assert cfg.data.labeled_fraction == 0.1 and "labeled_fraction=0.1" in out.output
    again = CliRunner().invoke(app, ["init", "shoes", "--data", "photos"])
    assert again.exit_code == 2 and "exists; pass --force" in again.output


def test_text_folders_and_csv_tables_get_their_own_recipes(tmp_path, monkeypatch):
    for cls in ("spam", "ham"):
        (tmp_path / "mail" / cls).mkdir(parents=True)
        (tmp_path / "mail" / cls / "a.txt").write_text("one\ntwo\n", encoding="latin-1")
    (tmp_path / "houses.csv").write_text("area,kind,price\n50,flat,100\n80,house,160\n")
    monkeypatch.chdir(tmp_path)
    scaffold.write("mail", "mail", text_split="line")
    scaffold.write("houses", "houses.csv", target="price")
    text, table = compose("mail"), compose("houses")
    assert text.data.source == "text_files" and text.data.text_split == "line"
    assert text.pretext.name == "masked_lm" and text.backbone.name == "transformer"
    assert table.data.source == "csv" and table.data.target == "price"
    assert table.backbone.name == "mlp"
    assert text.data.labeled_fraction == table.data.labeled_fraction == 0.1  # said, not 1 %
    with pytest.raises(DataError, match="--target cost is not a column .* area, kind, price"):
        scaffold.write("h2", "houses.csv", target="cost")
    with pytest.raises(ConfigError, match="--target is for CSV tables"):
        scaffold.write("m2", "mail", target="price")


def test_a_path_that_is_no_dataset_is_one_line(tmp_path):
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(DataError, match="does not exist"):
        scaffold.detect(tmp_path / "nowhere")
    with pytest.raises(DataError, match="not a .csv"):
        scaffold.detect(tmp_path / "notes.md")
    with pytest.raises(DataError, match="no images .* and no .txt files"):
        scaffold.detect(tmp_path)
    with pytest.raises(ConfigError, match="experiment name"):
        scaffold.write("../evil", str(tmp_path))


def test_a_latin1_csv_header_is_read_as_collect_reads_it(tmp_path, monkeypatch):
    (tmp_path / "prix.csv").write_bytes("surface,catégorie,prix\n50,a,100\n".encode("latin-1"))
    monkeypatch.chdir(tmp_path)
    scaffold.write("prix", "prix.csv", target="catégorie")  # the column, not 'cat\ufffdgorie'
    assert compose("prix").data.target == "catégorie"
