"""Exports: everything that turns a finetuned Keras model into files other runtimes open.

One module per concern, shared by `deploy`, `serve` and `predict`:

- `savedmodel`: the SavedModel (TF Serving layout); each modality's signatures and input
  preprocessing (pixel scaling and resizing, the tokenizer, table-column encoding) are
  its own (`pretrainer.data.modalities`), as is the input spec written beside every export.
- `litert`, `onnx`: the on-device and ONNX exports, with names and metadata that say
  what the inputs and outputs are.
- `parity`: runs an export in a fresh process with only its own runtime.
- `card`: MODEL_CARD.md (Hugging Face model-card layout).
"""
