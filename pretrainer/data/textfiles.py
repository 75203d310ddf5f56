"""Text files as a data source (`data.source=text_files data.path=DIR`).

`root/<class>/*.txt` is labeled by folder name; any other folder of `.txt` files
(or a single file) is unlabeled text for pretraining. Documents are whole files
(`data.text_split=file`), non-empty lines (`line`), or the pieces between
matches of a regular expression (any other value, e.g. `'^%$'` for fortune files;
matched per line). `data.encoding=auto` reads UTF-8 and, for a file that is not,
cp1252 (Windows Western, a superset of latin-1's printable characters) or latin-1;
how many files each codec read is reported. An explicit codec skips files it
cannot read, counted and listed.
"""

from __future__ import annotations

import re
from codecs import BOM_UTF8, BOM_UTF16_BE, BOM_UTF16_LE, BOM_UTF32_BE, BOM_UTF32_LE
from pathlib import Path

import numpy as np

from pretrainer.errors import ConfigError, DataError


def split_documents(text: str, how: str) -> list[str]:
    if how == "file":
        docs = [text]
    elif how == "line":
        docs = text.splitlines()
    else:
        try:
            docs = re.split(how, text, flags=re.MULTILINE)
        except re.error as exc:
            raise ConfigError(f"data.text_split='{how}' is not file, line or a valid regular "
                              f"expression: {exc}") from exc
    return [d.strip() for d in docs if d.strip()]


# byte-order marks, longest first (UTF-32's LE mark begins with UTF-16's)
BOMS = ((BOM_UTF32_LE, "utf-32"), (BOM_UTF32_BE, "utf-32"), (BOM_UTF8, "utf-8-sig"),
        (BOM_UTF16_LE, "utf-16"), (BOM_UTF16_BE, "utf-16"))


def decode(raw: bytes, encoding: str = "auto") -> tuple[str, str]:
    """(text, codec used). auto: the codec a byte-order mark names (UTF-8/16/32; Windows
    Notepad writes UTF-16 with one), else UTF-8, else cp1252, else latin-1 (which decodes
    any byte). Raises UnicodeDecodeError for an explicit codec that fails."""
    if encoding != "auto":
        return raw.decode(encoding), encoding
    for bom, codec in BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(codec), codec.removesuffix("-sig")
            except UnicodeDecodeError:
                break  # a mark followed by something else: decode it as below
    for codec in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(codec), codec.removesuffix("-sig")
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1"), "latin-1"


def _read(path: Path, root: Path, how: str, skipped: list, encoding: str = "auto",
          codecs: dict | None = None) -> list[str]:
    try:
        raw = path.read_bytes()
        text, codec = decode(raw, encoding)
    except UnicodeDecodeError as exc:
        skipped.append({"file": str(path.relative_to(root) if path != root else path.name),
                        "reason": f"not {encoding} (byte 0x{raw[exc.start]:02x} at offset "
                                  f"{exc.start}); try data.encoding=auto"})
        return []
    except OSError as exc:
        skipped.append({"file": str(path), "reason": exc.strerror or type(exc).__name__})
        return []
    if codecs is not None:
        codecs[codec] = codecs.get(codec, 0) + 1
    return split_documents(text, how)


def _txt(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.txt") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def list_text_files(path: str | None) -> dict:
    """{root, layout, files: [(file, class index or None)], class_names}, nothing read yet:
    collect's in-process and Beam paths both number documents in this order."""
    if not path:
        raise DataError("data.source=text_files needs data.path=DIR (a folder of .txt files)")
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"data.path={path} does not exist")
    if root.is_file():
        return {"root": root, "layout": "file", "files": [(root, None)], "class_names": []}
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                        and _txt(d))
    loose = [p for p in root.glob("*.txt") if p.is_file()]
    if len(class_dirs) >= 2 and not loose:
        return {"root": root, "layout": "classes", "class_names": [d.name for d in class_dirs],
                "files": [(f, c) for c, d in enumerate(class_dirs) for f in _txt(d)]}
    files = _txt(root)
    if not files:
        raise DataError(f"No .txt files under {root}")
    return {"root": root, "layout": "flat", "files": [(f, None) for f in files],
            "class_names": []}


def read_file(path: Path, root: Path, how: str, encoding: str = "auto"
              ) -> tuple[list[str], list, dict]:
    """(documents, skipped [{file, reason}], {codec: 1}) of one listed file."""
    skipped: list = []
    codecs: dict = {}
    return _read(path, root, how, skipped, encoding, codecs), skipped, codecs


def no_text_error(root: Path, skipped: list) -> DataError:
    return DataError(f"No readable text under {root} ({len(skipped)} file(s) skipped)")


def load_text_files(path: str | None, how: str, encoding: str = "auto") -> dict:
    listing = list_text_files(path)
    root = listing["root"]
    texts, labels, skipped, codecs = [], [], [], {}
    for f, c in listing["files"]:
        docs, sk, used = read_file(f, root, how, encoding)
        texts += docs
        labels += [c] * len(docs)
        skipped += sk
        for codec, n in used.items():
            codecs[codec] = codecs.get(codec, 0) + n
    labeled = listing["layout"] == "classes"
    if not texts and listing["layout"] != "file":
        raise no_text_error(root, skipped)
    return {"texts": np.array(texts, dtype=object),
            "labels": np.array(labels, np.int64) if labeled else None,
            "class_names": listing["class_names"], "skipped": skipped,
            "layout": listing["layout"], "codecs": codecs}
