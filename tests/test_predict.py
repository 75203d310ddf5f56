"""predict's output writer (the end-to-end runs are in tests/e2e)."""

import csv
import json
import os

import numpy as np
import pytest

from pretrainer.stages.predict import _Writer, printable


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_file_names_that_are_not_utf8_are_written_not_fatal(tmp_path, suffix):
    bad = os.fsdecode(b"caf\xe9 [1].png")  # a latin-1 name: Python keeps \xe9 as a surrogate
    assert printable(bad) == "caf\\xe9 [1].png" and printable("naïve.png") == "naïve.png"
    out = {"probabilities": np.array([[0.25, 0.75], [0.9, 0.1]], np.float32),
           "label": np.array([1, 0])}
    writer = _Writer(tmp_path / f"p{suffix}", ["cat", "dog"], regression=False)
    writer.write([bad, "naïve.png"], out)  # (UnicodeEncodeError: surrogates not allowed)
    writer.commit()
    text = (tmp_path / f"p{suffix}").read_text(encoding="utf-8")
    rows = ([json.loads(line) for line in text.splitlines()] if suffix == ".jsonl"
            else list(csv.DictReader(text.splitlines())))
    assert [r["input"] for r in rows] == ["caf\\xe9 [1].png", "naïve.png"]
    assert [r["class_name"] for r in rows] == ["dog", "cat"]


def test_text_rows_carry_the_text_beside_the_line_number(tmp_path):
    writer = _Writer(tmp_path / "p.csv", ["neg", "pos"], regression=False, text=True)
    writer.write(["line 1", "line 3"], {"probabilities": np.array([[0.2, 0.8], [0.6, 0.4]]),
                                        "label": np.array([1, 0])},
                 np.array(["crème brûlée, great", "meh"], dtype=object))
    writer.commit()
    rows = list(csv.DictReader((tmp_path / "p.csv").read_text(encoding="utf-8").splitlines()))
    assert [(r["input"], r["text"], r["class_name"]) for r in rows] == [
        ("line 1", "crème brûlée, great", "pos"), ("line 3", "meh", "neg")]
