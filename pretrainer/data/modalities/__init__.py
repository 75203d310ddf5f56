"""The three kinds of data the tool trains on, one module each, and what each decides.

Each modality's record (`base.Modality`, filled in by `image.py`, `text.py`,
`tabular.py`) holds how an example is stored and read, its preprocessing (pixel
scaling, the WordPiece vocabulary, column encoding), its SavedModel signatures and
what a client sends them, which export formats can carry it, how the model card
describes it and which classical baseline it is compared with. Callers ask the store's
record (`StoreManifest.kind`) for these instead of comparing the modality's name.
"""

from __future__ import annotations

from typing import Iterable, Optional

from pretrainer.data.modalities.base import Modality
from pretrainer.data.modalities.image import IMAGE
from pretrainer.data.modalities.tabular import TABULAR
from pretrainer.data.modalities.text import TEXT
from pretrainer.errors import DataError

MODALITIES: dict[str, Modality] = {m.name: m for m in (IMAGE, TEXT, TABULAR)}
BY_INPUT_KIND = {m.input_kind: m for m in MODALITIES.values()}


def get(name: str) -> Modality:
    try:
        return MODALITIES[name]
    except KeyError:
        raise DataError(f"Unknown modality '{name}'. Known: {', '.join(MODALITIES)}") from None


def input_spec(manifest, formats: Optional[Iterable[str]] = None) -> dict:
    """What a consumer must feed each export, written beside it as JSON."""
    regression = manifest.regression
    spec: dict = {"modality": manifest.modality,
                  "task": "regression" if regression else "classification",
                  "class_names": list(manifest.class_names)}
    spec.update(manifest.kind.entry_spec(manifest))
    spec["outputs"] = ({"prediction": "float32 [batch]"} if regression else
                       {"probabilities": f"float32 [batch, {manifest.num_classes}] softmax, "
                                         f"in class_names order",
                        "label": "int64 [batch] argmax", "class_name": "string [batch]"})
    if formats is not None:
        spec["formats"] = list(formats)
    return spec
