"""serve: a local HTTP server that speaks TF Serving's REST API for a deployed model.

    POST /v1/models/<name>:predict   {"instances": [image, ...]}
    GET  /v1/models/<name>           version status
    GET  /v1/models/<name>/metadata  input/output description

An image is a nested list [height][width][channels] (or [height][width] for
grayscale) of 0-255 integers, or {"b64": "<base64 PNG/JPEG/GIF/BMP bytes>"} as in
TF Serving's JSON convention for binary data. Any size: the exported graph
resizes. A client written against this works unchanged against TF Serving.

Python's ThreadingHTTPServer is enough for a local, single-model server and
adds no dependency; bad requests get a 400 with a JSON error, never a crash.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

import numpy as np

from pretrainer import runs
from pretrainer.console import esc, info
from pretrainer.errors import RunError

MAX_BODY_BYTES = 16 * 2**20
MAX_INSTANCES = 256


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


class Model:
    """The SavedModel's serving_default signature plus request validation."""

    def __init__(self, name: str, path: Path):
        import tensorflow as tf

        self.tf = tf
        self.name, self.path, self.version = name, path, path.name
        self.fn = tf.saved_model.load(str(path)).signatures["serving_default"]
        (self.input_name, spec), = self.fn.structured_input_signature[1].items()
        self.channels = spec.shape[-1]
        self.lock = threading.Lock()

    def _image(self, inst) -> np.ndarray:
        tf = self.tf
        if isinstance(inst, dict):
            if set(inst) != {"b64"} or not isinstance(inst["b64"], str):
                raise BadRequest('an encoded image must be {"b64": "<base64 string>"}')
            try:
                raw = base64.b64decode(inst["b64"], validate=True)
                img = tf.io.decode_image(raw, channels=self.channels, expand_animations=False)
            except Exception as exc:
                raise BadRequest(f"could not decode the b64 image: {type(exc).__name__}") from exc
            return img.numpy()
        try:
            arr = np.asarray(inst, dtype=np.float64)
        except (ValueError, TypeError) as exc:
            raise BadRequest("an instance must be a nested list of numbers or {\"b64\": ...}"
                             ) from exc
        if arr.ndim == 2 and self.channels == 1:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[-1] != self.channels:
            raise BadRequest(f"expected an image [height][width][{self.channels}], "
                             f"received shape {list(arr.shape)}")
        if arr.size == 0 or min(arr.shape[:2]) < 1 or max(arr.shape[:2]) > 4096:
            raise BadRequest(f"image height and width must be 1..4096, received {list(arr.shape)}")
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255:
            raise BadRequest("pixel values must be numbers in 0..255")
        return np.rint(arr).astype(np.uint8)

    def predict(self, body: dict) -> dict:
        if not isinstance(body, dict) or "instances" not in body:
            raise BadRequest('the body must be a JSON object with "instances": [...]')
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadRequest('"instances" must be a non-empty list')
        if len(instances) > MAX_INSTANCES:
            raise BadRequest(f"at most {MAX_INSTANCES} instances per request")
        images = [self._image(inst) for inst in instances]
        predictions = []
        with self.lock:
            for img in images:  # one at a time: instances may differ in size
                out = self.fn(**{self.input_name: self.tf.constant(img[None])})
                predictions.append({
                    "probabilities": out["probabilities"].numpy()[0].tolist(),
                    "label": int(out["label"].numpy()[0]),
                    "class_name": out["class_name"].numpy()[0].decode("utf-8"),
                })
        return {"predictions": predictions}

    def status(self) -> dict:
        return {"model_version_status": [{"version": self.version, "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}


def make_handler(model: Model):
    prefix = f"/v1/models/{model.name}"

    class Handler(BaseHTTPRequestHandler):
        server_version = "pretrainer-serve"

        def _send(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):  # quiet: one line per request is noise here
            pass

        def do_GET(self):
            path = self.path.split("?", 1)[0].rstrip("/")
            if path in (prefix, f"{prefix}/versions/{model.version}"):
                return self._send(200, model.status())
            if path == f"{prefix}/metadata":
                return self._send(200, {"model_spec": {"name": model.name,
                                                       "version": model.version},
                                        "signature": "serving_default",
                                        "input": f"uint8 images [batch, height, width, "
                                                 f"{model.channels}]"})
            self._send(404, {"error": f"Unknown path {path}. Model: {prefix}"})

        def do_POST(self):
            path = self.path.split("?", 1)[0]
            if path not in (f"{prefix}:predict", f"{prefix}/versions/{model.version}:predict"):
                return self._send(404, {"error": f"Unknown path {path}. Use POST {prefix}:predict"})
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                return self._send(400, {"error": "bad Content-Length"})
            if length <= 0:
                return self._send(400, {"error": "empty body"})
            if length > MAX_BODY_BYTES:
                return self._send(413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
            try:
                body = json.loads(self.rfile.read(length))
                return self._send(200, model.predict(body))
            except (json.JSONDecodeError, UnicodeDecodeError):
                return self._send(400, {"error": "the body is not valid JSON"})
            except BadRequest as exc:
                return self._send(400, {"error": str(exc)})
            except Exception as exc:  # a server must answer, not die
                return self._send(500, {"error": f"{type(exc).__name__}: {str(exc)[:200]}"})

    return Handler


def make_server(run: Path, host: str = "127.0.0.1", port: int = 8501
                ) -> tuple[ThreadingHTTPServer, Model]:
    name, path = find_export(run)
    model = Model(name, path)
    try:
        server = ThreadingHTTPServer((host, port), make_handler(model))
    except OSError as exc:
        raise RunError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return server, model


def run(run_dir: Optional[str], runs_root: str, experiment: str, host: str, port: int) -> None:
    deploy_run = runs.resolve(runs_root, experiment, "deploy", run_dir)
    server, model = make_server(deploy_run, host, port)
    info(f"serving {esc(model.path)} at http://{host}:{server.server_address[1]}/v1/models/"
         f"{model.name} (POST :predict); Ctrl-C stops")
    try:
        server.serve_forever()
    finally:
        server.server_close()
