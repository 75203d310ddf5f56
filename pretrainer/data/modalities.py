"""The three kinds of data the tool trains on, and what each decides.

One record per modality holds the facts the store, predict, deploy and the model card
used to keep in tables of their own keyed by the modality's name: how an example is
stored, what a user hands to `predict`, which SavedModel signature local prediction
calls, which export formats can carry the model, and how the card tags it. The
preprocessing itself (scaling, decoding, column encoding) is `data/preprocess.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from pretrainer.errors import DataError


@dataclass(frozen=True)
class Modality:
    name: str  # image | text | tabular (the store manifest's `modality`)
    stored: Mapping[str, str]  # TFRecord feature -> what it holds (manifest feature_spec)
    dtype: str  # the stored example's dtype
    user_input: str  # what predict and embed take for it
    input_kind: str  # inputs.kind_of's name for such a path: folder | text | csv
    predict_signature: tuple[str, str]  # (SavedModel signature, its input) predict calls
    card_tag: str  # the model card's pipeline_tag for a classifier
    formats: tuple[str, ...] = ("saved_model", "litert", "onnx")  # exports that carry it
    formats_why: str = ""  # why others cannot
    fixed_shape: bool = True  # examples have one shape (text: strings of any length)
    extra: Mapping[str, str] = field(default_factory=dict)


MODALITIES: dict[str, Modality] = {
    "image": Modality(
        name="image", stored={"image": "raw uint8 bytes, row-major HWC"}, dtype="uint8",
        user_input="a folder of images", input_kind="folder",
        predict_signature=("serve_float", "images"), card_tag="image-classification"),
    "text": Modality(
        name="text", stored={"text": "UTF-8 bytes"}, dtype="string",
        user_input="a text file, one example per line", input_kind="text",
        predict_signature=("serving_default", "text"), card_tag="text-classification",
        formats=("saved_model",),
        formats_why="LiteRT and ONNX cannot carry the WordPiece tokenizer's ops. Use "
                    "deploy=text", fixed_shape=False),
    "tabular": Modality(
        name="tabular", stored={"features": "float32 list (encoded columns)"}, dtype="float32",
        user_input="a .csv file with the training columns", input_kind="csv",
        predict_signature=("serve_features", "features"), card_tag="tabular-classification"),
}
BY_INPUT_KIND = {m.input_kind: m for m in MODALITIES.values()}


def get(name: str) -> Modality:
    try:
        return MODALITIES[name]
    except KeyError:
        raise DataError(f"Unknown modality '{name}'. Known: {', '.join(MODALITIES)}") from None
