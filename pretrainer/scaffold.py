"""`pretrainer init NAME --data PATH`: an experiment file for the user's own data.

The data's kind is read from the path (a folder of images, a folder of text files, or a
CSV file); the file copies the shipped experiment for that kind (folder_ae, text_mlm,
or a table recipe), points `data.path` at the data and is written where every verb
finds it (`./experiments/`, searched before the built-in configs), so the user types
the path once and each verb after takes `-c NAME`.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import re
from collections import Counter
from pathlib import Path
from typing import Optional

from pretrainer.config import USER_CONFIG_DIR, builtin_config_dir
from pretrainer.data.folders import IMAGE_EXTENSIONS
from pretrainer.data.textfiles import decode
from pretrainer.errors import ConfigError, DataError
from pretrainer.files import atomic_write_text

SCAN_LIMIT = 5000  # files looked at to tell images from text
LABELED_FRACTION = 0.1  # the label budget an experiment file starts with (folder_ae's)


# kind -> (the shipped experiment it copies, the data group, what it says)
TEMPLATES = {
    "images": ("folder_ae", "image_folder", "a folder of images"),
    "text": ("text_mlm", "text_files", "a folder of text files"),
    "table": (None, "csv", "a CSV table"),
}
TABLE = {"defaults": ["pretrainer_schema", {"data": "csv"}, {"backbone": "mlp"},
                      {"pretext": "denoising"}, {"finetune": "classifier"},
                      {"trainer": "default"}, {"deploy": "default"}, "_self_"],
         "backbone": {"filters": [128, 64], "latent_dim": 32},
         "trainer": {"epochs": 20, "batch_size": 64}}


def detect(path: Path) -> tuple[str, str]:
    """(kind, what was found) for a data path; DataError when it is none of the three."""
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "table", f"the CSV file {path.name}"
        raise DataError(f"{path} is a file but not a .csv: give a CSV table, a folder of "
                        f"images or a folder of text files")
    if not path.is_dir():
        raise DataError(f"{path} does not exist")
    counts: Counter = Counter()
    for n, f in enumerate(p for p in path.rglob("*") if p.is_file()):
        if n >= SCAN_LIMIT:
            break
        suffix = f.suffix.lower()
        kind = "images" if suffix in IMAGE_EXTENSIONS else "text" if suffix == ".txt" else None
        if kind:
            counts[kind] += 1
    # class folders: the subfolders, or those of train/ when the splits are given
    top = path / "train" if (path / "train").is_dir() else path
    classes = sorted(d.name for d in top.iterdir() if d.is_dir() and not d.name.startswith("."))

    if not counts:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) and no .txt files "
                        f"under {path}")
    kind, n = counts.most_common(1)[0]
    shown = ", ".join(classes[:5]) + (f", … ({len(classes)} in all)" if len(classes) > 5 else "")
    return kind, (f"{n}{'+' if n >= SCAN_LIMIT else ''} {'images' if kind == 'images' else 'text files'}"
                  + (f" in class folders {shown}" if classes
                     else ", no class folders (unlabeled)"))



def _csv_columns(path: Path) -> list[str]:
    """The header as `collect` reads it (the same codec detection: BOMs, latin-1 ...)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    text, _ = decode(head.split(b"\n", 1)[0])
    return [h.strip() for h in next(csv.reader(io.StringIO(text)), [])]



def experiment(name: str, data: Path, target: Optional[str] = None,
               text_split: Optional[str] = None) -> tuple[dict, str]:
    """(the experiment as a dict, a line saying what was found)."""
    import yaml

    kind, found = detect(data)
    template, group, what = TEMPLATES[kind]
    doc = (yaml.safe_load((builtin_config_dir() / f"{template}.yaml").read_text())
           if template else {k: (list(v) if isinstance(v, list) else dict(v))
                             for k, v in TABLE.items()})
    doc["defaults"] = [{"data": group} if isinstance(d, dict) and "data" in d else d
                       for d in doc["defaults"]]
    doc["description"] = f"{what}: {data}" + (f", target {target}" if target else "")
    settings: dict = {"path": str(data)}
    if kind == "table":
        columns = _csv_columns(data)
        if target is not None and target not in columns:
            raise DataError(f"--target {target} is not a column of {data}. Columns: "
                            f"{', '.join(columns[:30])}")
        settings["target"] = target  # none: unlabeled rows, to pretrain on
        found += f" ({len(columns)} columns)"
    elif target is not None:
        raise ConfigError("--target is for CSV tables; folders are labeled by their "
                          "class folders")
    if text_split is not None:
        if kind != "text":
            raise ConfigError("--text-split is for folders of text files")
        settings["text_split"] = text_split
    doc["data"] = {**(doc.get("data") or {}), **settings}
    doc["data"]["name"] = name  # its own store under data/
    # the label budget, written out: the tool's default (1 %) suits a study of few labels,
    # not a first run on one's own data; the rest of the labeled examples pretrain only
    doc["data"].setdefault("labeled_fraction", LABELED_FRACTION)
    if kind != "table" or target:
        found += (f"; finetuning keeps data.labeled_fraction="
                  f"{doc['data']['labeled_fraction']:g} of the labels (1.0 uses them all)")
    return doc, found


def write(name: str, data: str, *, out_dir: Optional[str] = None, target: Optional[str] = None,
          text_split: Optional[str] = None, force: bool = False) -> tuple[Path, str]:
    """Write `NAME.yaml`; (its path, what was found in the data)."""
    import yaml

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"experiment name {name!r}: use letters, digits, '_', '.' and '-'")
    path = Path(data).expanduser().resolve()
    doc, found = experiment(name, path, target, text_split)
    folder = Path(out_dir or USER_CONFIG_DIR)
    out = folder / f"{name}.yaml"
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; pass --force to replace it")
    head = (f"# pretrainer experiment '{name}', written by `pretrainer init` on "
            f"{_dt.date.today().isoformat()}: {found}.\n"
            f"# Every verb takes it: pretrainer pipeline -c {name}; pretrainer predict -c "
            f"{name} INPUT.\n# Edit freely (docs/configuration.md lists every key).\n")
    atomic_write_text(out, head + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return out, found
