"""CSV files as a data source (`data.source=csv data.path=FILE data.target=COLUMN`).

Columns whose non-empty values all parse as numbers are numeric (missing values
become the column mean, recorded); others are categorical and one-hot encoded
(an empty cell is its own category). The target is a regression target when it
is numeric with many distinct values (or `data.task=regression`), else class
labels. Without `data.target` the rows are unlabeled, for pretraining.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional

import numpy as np

from pretrainer.data.modalities.tabular import MISSING
from pretrainer.errors import DataError

MAX_CATEGORIES = 100


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def load_csv(path: Optional[str], target: Optional[str], task: str,
             encoding: str = "auto") -> dict:
    if not path:
        raise DataError("data.source=csv needs data.path=FILE.csv")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"data.path={path} is not a file")
    header, cols, codec = _columns(file, encoding, target)
    x, encodings, names = _features(file, header, cols, target)
    result = {"x": x, "y": None, "class_names": [], "task": "classification", "encoding": codec,
              "encodings": encodings, "feature_names": names}
    if target is None:
        return result
    tv = cols[target]
    keep = np.array([v != "" for v in tv])
    result.update(_target(tv, target, task))
    result["x"] = x[keep]
    result["dropped_rows_without_target"] = int((~keep).sum())
    return result


def _columns(file: Path, encoding: str, target: Optional[str]):
    """(header, column -> stripped cells, codec) of a CSV whose rows all fit the header;
    missing-value words in the target column read as empty (no label)."""
    from pretrainer.data.textfiles import decode

    try:
        text, codec = decode(file.read_bytes(), encoding)
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except UnicodeDecodeError as exc:
        raise DataError(f"{file} is not {encoding} (offset {exc.start}); use "
                        f"data.encoding=auto or the file's codec") from exc
    except csv.Error as exc:
        raise DataError(f"{file} is not a readable CSV: {exc}") from exc
    if len(rows) < 2:
        raise DataError(f"{file} has no data rows under its header")
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if any(c.strip() for c in r)]
    bad = [i + 2 for i, r in enumerate(body) if len(r) != len(header)]
    if bad:
        raise DataError(f"{file}: row(s) {', '.join(map(str, bad[:5]))} have a different number "
                        f"of cells than the header ({len(header)})")
    cols = {h: [r[i].strip() for r in body] for i, h in enumerate(header)}
    if target is not None and target in cols:  # NaN, NA, null ... in the target: no label
        cols[target] = ["" if v.lower() in MISSING else v for v in cols[target]]
        if not any(cols[target]):
            raise DataError(f"target column '{target}' of {file.name} has no values: all "
                            f"{len(body)} rows are empty or {'/'.join(sorted(MISSING - {''}))}")
    if target is not None and target not in cols:
        raise DataError(f"data.target='{target}' is not a column of {file.name}. Columns: "
                        f"{', '.join(header)}")
    return header, cols, codec


def _features(file: Path, header: list, cols: dict, target: Optional[str]):
    """(float32 rows, column encodings, feature names): numeric columns with missing
    cells filled by the mean, the others one-hot."""
    features, encodings, names = [], [], []
    for h in header:
        if h == target:
            continue
        values = cols[h]
        present = [v for v in values if v != ""]
        if present and all(_is_number(v) for v in present):
            arr = np.array([float(v) if v != "" else np.nan for v in values], np.float64)
            fill = float(np.nanmean(arr)) if present else 0.0
            features.append(np.where(np.isnan(arr), fill, arr)[:, None])
            encodings.append({"column": h, "kind": "numeric", "fill": fill})
            names.append(h)
        else:
            cats = sorted(set(values))
            if len(cats) > MAX_CATEGORIES:
                raise DataError(f"column '{h}' has {len(cats)} distinct non-numeric values; at "
                                f"most {MAX_CATEGORIES} are one-hot encoded. Drop or bucket it")
            onehot = np.array([[v == c for c in cats] for v in values], np.float64)
            features.append(onehot)
            encodings.append({"column": h, "kind": "categorical", "categories": cats})
            names += [f"{h}={c}" for c in cats]
    if not features:
        raise DataError(f"{file} has no feature columns besides the target")
    return np.concatenate(features, axis=1).astype(np.float32), encodings, names


def _target(tv: list, target: str, task: str) -> dict:
    """The labeled rows' targets: y, task, and class names for a classification."""
    numeric = all(_is_number(v) for v in tv if v != "")
    distinct = len(set(v for v in tv if v != ""))
    is_regression = task == "regression" or (task == "auto" and numeric and distinct > 20)
    if task == "auto" and numeric and distinct <= 20 and any(
            not float(v).is_integer() for v in tv if v != ""):
        is_regression = True  # a few distinct fractional values: still a quantity
    if is_regression:
        if not numeric:
            raise DataError(f"data.task=regression but target '{target}' is not numeric")
        return {"y": np.array([float(v) for v in tv if v != ""], np.float32),
                "task": "regression"}
    cats = sorted(set(v for v in tv if v != ""), key=lambda v: (not _is_number(v), float(v)
                                                                if _is_number(v) else v))
    index = {c: i for i, c in enumerate(cats)}
    return {"y": np.array([index[v] for v in tv if v != ""], np.int64), "class_names": cats}
