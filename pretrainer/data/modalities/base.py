"""What every modality decides, as one record with methods (the behaviour a modality
owns; `image.py`, `text.py` and `tabular.py` fill it in).

The store, the tf.data readers, the SavedModel signatures, `predict`, parity checks,
the model card and the classical baseline ask the store's modality record
(`StoreManifest.kind`) instead of comparing its name, so adding a modality is one new
module here. Nothing in this package imports the rest of `data/` (the store manifest
arrives as an argument), so every layer above can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class Modality:
    name: str  # image | text | tabular (the store manifest's `modality`)
    stored: Mapping[str, str]  # TFRecord feature -> what it holds (manifest feature_spec)
    dtype: str  # the stored example's dtype
    user_input: str  # what predict and embed take for it
    input_kind: str  # inputs.kind_of's name for such a path: folder | text | csv
    predict_signature: tuple[str, str]  # (SavedModel signature, its input) predict calls
    card_tag: str  # the model card's pipeline_tag for a classifier
    tensor_name: str  # the float input's name in LiteRT and ONNX exports
    formats: tuple[str, ...] = ("saved_model", "litert", "onnx")  # exports that carry it
    formats_why: str = ""  # why others cannot
    fixed_shape: bool = True  # examples have one shape (text: strings of any length)
    strings: bool = False  # examples are raw strings; the model holds a tokenizer
    pixels: bool = False  # examples are images: augmentations, attribution maps, PNG files
    standardized: bool = False  # the model standardises features with the pool's statistics
    classical_exact: bool = False  # the classical baseline has an exact Keras twin
    card_call: str = ""  # the serving_default call in the card's Python example
    card_imports: tuple[str, ...] = ()  # imports that call needs beside tensorflow
    extra: Mapping[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------ the store
    def example_features(self, row) -> dict:
        """One example as tf.train.Feature values (the label is added by the store)."""
        raise NotImplementedError

    def record_shape(self, x_pool) -> list[int]:
        """The shape of one stored example (the store manifest's `shape`)."""
        import numpy as np

        return [int(d) for d in np.asarray(x_pool[:1]).shape[1:]]

    # ------------------------------------------------------------ serving
    def entry_spec(self, manifest) -> dict:
        """The input part of input_spec.json: signatures, their inputs, the tensor."""
        raise NotImplementedError

    def signatures(self, model, manifest, outputs) -> dict:
        """{signature name: tf.function} over `model`; `outputs(probs)` builds the
        outputs every signature returns (probabilities, label, class_name)."""
        raise NotImplementedError

    def client_inputs(self, manifest, x, fmt: str) -> dict:
        """Stored examples `x` as a client feeds export `fmt`'s default entry point."""
        raise NotImplementedError

    # ------------------------------------------------------------ the model card
    def card_input(self, manifest) -> str:
        """One line: what the model takes."""
        raise NotImplementedError

    def card_usage(self, name: str, manifest) -> list[str]:
        """Markdown lines: how to call the served model over REST."""
        raise NotImplementedError

    # ------------------------------------------------------------ the classical baseline
    def classical_describe(self, regression: bool) -> str:
        raise NotImplementedError

    def classical_features(self, x):
        """Stored examples -> what the classical estimator fits on."""
        raise NotImplementedError

    def classical_candidates(self, regression: bool, n: int, c_grid) -> list:
        """(name, unfitted scikit-learn estimator), the default first."""
        raise NotImplementedError
