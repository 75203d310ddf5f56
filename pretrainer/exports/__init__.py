"""Exports: everything that turns a finetuned Keras model into files other runtimes open.

One module per concern, shared by `deploy`, `serve` and `predict`:

- `preprocess`: each modality's input preprocessing, defined once (pixel scaling and
  resizing, table-column encoding) and the input spec written beside every export.
- `savedmodel`: the SavedModel (TF Serving layout) and its signatures per modality.
- `litert`, `onnx`: the on-device and ONNX exports, with names and metadata that say
  what the inputs and outputs are.
- `parity`: runs an export in a fresh process with only its own runtime.
- `card`: MODEL_CARD.md (Hugging Face model-card layout).
"""
