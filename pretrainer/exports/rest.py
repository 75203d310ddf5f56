"""TF Serving's REST contract over a SavedModel, without the HTTP: a request body (row
or columnar format, `signature_name`, `{"b64": ...}` strings) becomes tensors for a
signature, and its outputs become TF Serving's response shapes. `pretrainer serve` puts
it behind waitress (stages/serve.py); `find_export` locates a deploy run's SavedModel.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

import numpy as np

from pretrainer.errors import RunError

MAX_ELEMENTS = 2**25  # numbers in one request's tensors (a few hundred large images)


class BadRequest(ValueError):
    pass


def find_export(run: Path) -> tuple[str, Path]:
    """(model name, newest version dir) of a deploy run's SavedModel."""
    export = Path(run) / "export"
    for model_dir in sorted(p for p in export.iterdir() if p.is_dir()) if export.is_dir() else []:
        versions = sorted((int(v.name), v) for v in model_dir.iterdir()
                          if v.is_dir() and v.name.isdigit() and (v / "saved_model.pb").is_file())
        if versions:
            return model_dir.name, versions[-1][1]
    raise RunError(f"{run} has no SavedModel export (export/<name>/<version>/): run "
                   f"`pretrainer deploy` with deploy.formats including saved_model")


def _is_b64(v) -> bool:
    return isinstance(v, dict) and set(v) == {"b64"}


def _check_leaves(values, integer: bool, depth: int = 0) -> None:
    """Numbers only (JSON integers for integer dtypes), nested at most 8 deep."""
    if depth > 8:
        raise BadRequest("the value is nested deeper than any input of this model")
    for v in values if isinstance(values, list) else [values]:
        if isinstance(v, list):
            _check_leaves(v, integer, depth + 1)
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BadRequest(f"expected numbers, received {type(v).__name__} "
                             f"{json.dumps(v)[:40]}")
        elif integer and not isinstance(v, int):
            raise BadRequest(f"this input is an integer tensor: received {v!r}. Send "
                             f"integers (uint8 pixels 0-255), or use the signature that "
                             f"takes float32 (serve_float)")


class Model:
    """A SavedModel's signatures, with TF Serving's request parsing and response shapes."""

    def __init__(self, name: str, path: Path):
        import tensorflow as tf

        from pretrainer.exports.savedmodel import load_text_ops, signature_defs

        load_text_ops()
        self.tf = tf
        self.name, self.path, self.version = name, Path(path), Path(path).name
        loaded = tf.saved_model.load(str(path))
        self._loaded = loaded  # keeps the signatures' variables alive
        self.signatures = dict(loaded.signatures)
        self.defs = signature_defs(path)

    # ---------------------------------------------------------------- requests

    def _signature(self, body: dict):
        name = body.get("signature_name", "serving_default")
        if not isinstance(name, str) or name not in self.signatures:
            raise BadRequest(f"Serving signature name: \"{name}\" not found in signature def. "
                             f"Signatures: {', '.join(sorted(self.signatures))}")
        fn = self.signatures[name]
        return name, fn, fn.structured_input_signature[1]

    def _tensor(self, key: str, values: list, spec):
        """A JSON batch (one entry per example) -> a NumPy array of the input's dtype."""
        tf = self.tf
        if spec.dtype == tf.string:
            out = []
            for v in values:
                if _is_b64(v):
                    if not isinstance(v["b64"], str):
                        raise BadRequest(f"{key}: a b64 value must be a string")
                    try:
                        out.append(base64.b64decode(v["b64"], validate=True))
                    except (binascii.Error, ValueError) as exc:
                        raise BadRequest(f"{key}: the b64 value is not valid base64") from exc
                elif isinstance(v, str):
                    out.append(v.encode("utf-8"))
                elif key == "image_bytes" and isinstance(v, list):
                    raise BadRequest("this signature takes encoded image files as "
                                     "{\"b64\": \"...\"}; uint8 pixel arrays go to "
                                     "\"signature_name\": \"serve_pixels\"")
                else:

                    raise BadRequest(f"{key} is a string input: send text or "
                                     f"{{\"b64\": \"...\"}}, received {json.dumps(v)[:40]}")
            return np.array(out, dtype=object)
        if any(_is_b64(v) for v in values):
            raise BadRequest(f"{key} takes {spec.dtype.name} numbers, not b64 bytes; encoded "
                             f"images go to the default signature (leave out "
                             f"\"signature_name\", or name \"serve_bytes\")")
        integer = spec.dtype.is_integer
        _check_leaves(values, integer)
        try:
            arr = np.asarray(values, dtype=np.int64 if integer else np.float64)
        except (ValueError, OverflowError) as exc:
            raise BadRequest(f"{key}: the examples have different shapes (one tensor needs "
                             f"one shape; images of other sizes can be sent as b64 bytes to "
                             f"the default signature)") from exc
        if arr.size > MAX_ELEMENTS:
            raise BadRequest(f"{key}: {arr.size} values is over the limit of {MAX_ELEMENTS}")
        want = spec.shape.as_list()
        if arr.ndim != len(want) or any(w is not None and w != g
                                        for w, g in zip(want, arr.shape, strict=False)):
            shown = ["-1" if w is None else str(w) for w in want]
            raise BadRequest(f"{key}: expected shape [{', '.join(shown)}] (batch first), "
                             f"received {list(arr.shape)}")
        if arr.size == 0:
            raise BadRequest(f"{key}: empty tensor")
        if integer:
            lo, hi = spec.dtype.min, spec.dtype.max
            if arr.min() < lo or arr.max() > hi:
                raise BadRequest(f"{key}: values must be {lo}..{hi} for {spec.dtype.name}")
        elif not np.isfinite(arr).all():
            raise BadRequest(f"{key}: values must be finite numbers")
        return arr.astype(spec.dtype.as_numpy_dtype)

    def _inputs(self, body: dict, specs: dict) -> tuple[dict, bool]:
        """({input name: batch of JSON values}, row format?)."""
        names = list(specs)
        if ("instances" in body) == ("inputs" in body):
            raise BadRequest('the body must have exactly one of "instances" (row format) or '
                             '"inputs" (columnar format)')
        if "instances" in body:
            rows = body["instances"]
            if not isinstance(rows, list) or not rows:
                raise BadRequest('"instances" must be a non-empty list')
            named = all(isinstance(r, dict) and not _is_b64(r) for r in rows)
            if len(names) > 1 and not named:
                raise BadRequest(f"this signature has {len(names)} inputs: each instance "
                                 f"must be an object with {', '.join(names)}")
            if named and (len(names) > 1 or set(rows[0]) == set(names)):
                for r in rows:
                    if set(r) != set(names):
                        raise BadRequest(f"each instance needs exactly the inputs "
                                         f"{', '.join(names)}; received {', '.join(r)}")
                return {n: [r[n] for r in rows] for n in names}, True
            return {names[0]: rows}, True
        cols = body["inputs"]
        if isinstance(cols, dict) and not _is_b64(cols) and (len(names) > 1
                                                             or set(cols) == set(names)):
            if set(cols) != set(names):
                raise BadRequest(f"\"inputs\" needs exactly {', '.join(names)}; received "
                                 f"{', '.join(cols)}")
        elif len(names) == 1:
            cols = {names[0]: cols}
        else:
            raise BadRequest(f"this signature has {len(names)} inputs: \"inputs\" must be an "
                             f"object with {', '.join(names)}")
        for n, v in cols.items():
            if not isinstance(v, list) or not v:
                raise BadRequest(f"\"inputs\": {n} must be a non-empty list (batch first)")
        return dict(cols), False

    def predict(self, body) -> dict:
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        _, fn, specs = self._signature(body)
        batches, row_format = self._inputs(body, specs)
        feed = {n: self._tensor(n, batches[n], specs[n]) for n in specs}
        sizes = {len(a) for a in feed.values()}
        if len(sizes) > 1:
            raise BadRequest("all inputs must have the same batch size")
        tf = self.tf
        try:
            out = fn(**{n: tf.constant(a, dtype=specs[n].dtype) for n, a in feed.items()})
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as exc:
            why = _tf_reason(exc.message or "")
            if "image file format" in why:
                why += " Send each image file's bytes as {\"b64\": \"...\"}"
            raise BadRequest(why[:300]) from exc
        values = {k: _jsonable(k, v.numpy()) for k, v in out.items()}
        if row_format:
            n = len(next(iter(values.values())))
            if len(values) == 1:
                return {"predictions": next(iter(values.values()))}
            return {"predictions": [{k: v[i] for k, v in values.items()} for i in range(n)]}
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}

    # ---------------------------------------------------------------- metadata

    def status(self) -> dict:
        return {"model_version_status": [{"version": self.version, "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}

    def metadata(self) -> dict:
        return {"model_spec": {"name": self.name, "signature_name": "",
                               "version": self.version},
                "metadata": {"signature_def": {"signature_def": self.defs}}}


def _tf_reason(message: str) -> str:
    """The line of a TensorFlow error that says what was wrong with the input: its first
    line is "Graph execution error:", then the traceback of the graph's definition."""
    for line in reversed(message.strip().splitlines()):
        line = line.strip()
        if line and not line.startswith(("[[", "File ", "Detected at", "Graph execution",
                                         "(most recent")):
            return line
    return "invalid input"


def _jsonable(name: str, arr: np.ndarray) -> list:

    """A tensor as JSON, as TF Serving writes it: strings as UTF-8 text, or {"b64": ...}
    for outputs whose name ends in _bytes (and for bytes that are not UTF-8)."""
    if arr.dtype == object:
        def one(b):
            if isinstance(b, np.ndarray):
                return [one(x) for x in b]
            try:
                if not name.endswith("_bytes"):
                    return b.decode("utf-8")
            except UnicodeDecodeError:
                pass
            return {"b64": base64.b64encode(b).decode("ascii")}

        return [one(b) for b in arr]
    return arr.tolist()
