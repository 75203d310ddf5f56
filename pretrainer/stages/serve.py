"""serve: a local HTTP server that speaks TF Serving's REST API for a deployed SavedModel.

    POST /v1/models/<name>[/versions/<v>]:predict
    GET  /v1/models/<name>[/versions/<v>]            version status
    GET  /v1/models/<name>[/versions/<v>]/metadata   the signature defs

Requests and responses follow TF Serving's REST API documentation: the row format
(`{"instances": [...]}`, each instance a value or an object of named inputs) answers
`{"predictions": [...]}`; the columnar format (`{"inputs": value or {name: value}}`)
answers `{"outputs": ...}`; `signature_name` picks a signature (default
`serving_default`); a `{"b64": "..."}` value feeds a string input (the image export's
default signature decodes PNG/JPEG/GIF/BMP in its graph, as TF Serving would run it).
Integer inputs take JSON integers only: float pixels sent to the uint8 signature
(`serve_pixels`) are a 400, never rounded. Errors are `{"error": "..."}` with a 4xx code.


Every modality the tool trains is served: images, text (TensorFlow Text's ops are
registered first, as TF Serving's model server links them) and table rows (one
named input per CSV column). A fixed pool of worker threads answers connections,
each connection has a timeout, and client faults (resets, timeouts, bad JSON) are
answered or dropped without a traceback. The HTTP server is waitress (see `Server`);
the TF Serving contract (parsing, signatures, response shapes) is this module's own.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import sys
from http import HTTPStatus
from pathlib import Path
from typing import Optional

import numpy as np

from pretrainer import runs
from pretrainer.console import esc, info
from pretrainer.errors import ConfigError, RunError

MAX_BODY_BYTES = 16 * 2**20
MAX_ELEMENTS = 2**25  # numbers in one request's tensors (a few hundred large images)
SOCKET_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 65536  # request line + headers; more is a 431
WORKERS = 8
BACKLOG = 64  # requests waiting for a worker; beyond this a 503


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


# ---------------------------------------------------------------- HTTP

def make_app(model: Model):
    """The TF Serving REST contract as a WSGI application (waitress runs it)."""
    prefix = f"/v1/models/{model.name}"
    versioned = f"{prefix}/versions/{model.version}"

    def reply(start_response, code: int, payload: dict) -> list[bytes]:
        data = json.dumps(payload).encode("utf-8")
        start_response(f"{code} {HTTPStatus(code).phrase}",
                       [("Content-Type", "application/json"),
                        ("Content-Length", str(len(data)))])
        return [data]

    def app(environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if method == "GET":
            path = path.rstrip("/")
            if path in (prefix, versioned):
                return reply(start_response, 200, model.status())
            if path in (f"{prefix}/metadata", f"{versioned}/metadata"):
                return reply(start_response, 200, model.metadata())
            return reply(start_response, 404, {"error": f"Unknown path {path}. Model: {prefix}"})
        if method != "POST":
            return reply(start_response, 405, {"error": f"{method} is not served: GET the "
                                                        f"model's status, POST :predict"})
        if path not in (f"{prefix}:predict", f"{versioned}:predict"):
            return reply(start_response, 404, {"error": f"Unknown path {path}. Use POST "
                                                        f"{prefix}:predict"})
        # (waitress has read the whole body before a worker runs this: a client that
        # sends half a body holds no worker; over MAX_BODY_BYTES it answered 413 itself)
        try:  # (PEP 3333: never read past CONTENT_LENGTH; waitress sets it for chunked too)
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length <= 0:
            return reply(start_response, 400, {"error": "empty body"})
        raw = environ["wsgi.input"].read(length)

        try:
            return reply(start_response, 200, model.predict(json.loads(raw)))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return reply(start_response, 400, {"error": "the body is not valid JSON"})
        except BadRequest as exc:
            return reply(start_response, 400, {"error": str(exc)})
        except RecursionError:
            return reply(start_response, 400, {"error": "the JSON is nested too deeply"})
        except Exception as exc:  # a server must answer, not die; one line, no traceback
            print(f"serve: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
            return reply(start_response, 500,
                         {"error": f"{type(exc).__name__}: {str(exc)[:200]}"})

    return app


class Server:
    """The WSGI app on waitress, a maintained server: its asyncore loop reads each
    request whole (head and body) before a worker thread runs the app, so silent,
    half-sent and slow clients hold no worker; it closes connections idle for
    SOCKET_TIMEOUT_S and answers a Content-Length over MAX_BODY_BYTES with a 413 before
    reading the body. Our additions, in waitress's documented extension points (the
    channel's error task, the task dispatcher): errors as TF Serving's JSON, and a 503
    at once when BACKLOG requests already wait for a worker.

    Chosen over the hand-written selectors + thread-pool server it replaced by
    measurement on the same model in one run (2-core Xeon with AMX): p50 1.74 vs
    1.87 ms for one 28x28 image, 15.3 vs 14.5 ms for 32, and 398 vs 275 requests/s with
    8 concurrent clients; benchmarks/serve_latency.py compares it with the standard
    library's threading server.

    """

    def __init__(self, app, host: str, port: int, workers: int = WORKERS,
                 backlog: int = BACKLOG, max_body: Optional[int] = None):
        self.max_body = max_body or MAX_BODY_BYTES
        from waitress.server import create_server

        self._map: dict = {}  # our own socket map: shutdown() closes every channel in it
        self._closing = False
        self._server = create_server(
            app, map=self._map, _dispatcher=_dispatcher(workers, backlog), host=host, port=port,
            threads=workers, channel_timeout=int(SOCKET_TIMEOUT_S), cleanup_interval=1,
            max_request_body_size=self.max_body,
            max_request_header_size=MAX_HEAD_BYTES,
            connection_limit=MAX_CONNECTIONS, asyncore_use_poll=True, ident="pretrainer-serve",
            clear_untrusted_proxy_headers=True)
        self._server.channel_class = _channel_class(self.max_body)
        self.server_address = (self._server.effective_host, self._server.effective_port)

    def serve_forever(self) -> None:
        """Serve until shutdown(); Ctrl-C and SIGTERM end it as KeyboardInterrupt (waitress's
        run() returns quietly on those; `run` below tells them from a shutdown())."""
        self._server.run()
        if not self._closing:
            raise KeyboardInterrupt


    def shutdown(self) -> None:
        from waitress import wasyncore

        self._closing = True
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        wasyncore.close_all(self._map)

    def server_close(self) -> None:
        if not self._closing:
            self.shutdown()


MAX_CONNECTIONS = 1024  # open connections (waitress stops accepting beyond: they wait)


def _channel_class(max_body: int):
    """waitress's HTTP channel with its error responses (400, 413, 431, 503) as JSON."""
    from waitress.channel import HTTPChannel
    from waitress.task import ErrorTask

    class JsonErrorTask(ErrorTask):
        def execute(self):
            e = self.request.error
            message = (f"body over {max_body} bytes" if e.code == 413
                       else f"{e.reason}: {e.body}" if e.body else e.reason)
            body = json.dumps({"error": message}).encode("utf-8")
            self.status = f"{e.code} {e.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class Channel(HTTPChannel):
        error_task_class = JsonErrorTask

    return Channel


def _dispatcher(workers: int, backlog: int):
    """waitress's thread pool of `workers`, answering 503 (ahead of the queue) when
    `backlog` requests already wait for a worker, instead of queueing without bound."""
    import logging

    from waitress.task import ThreadedTaskDispatcher
    from waitress.utilities import Error

    # its "Task queue depth is N" warning per queued request: the 503 is the signal here
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)

    class Busy(Error):
        code, reason = 503, "Service Unavailable"

    class Dispatcher(ThreadedTaskDispatcher):
        def add_task(self, task):
            request = task.requests[0] if getattr(task, "requests", None) else None
            with self.lock:
                full = len(self.queue) >= backlog
                if full and request is not None and not request.error:
                    request.error = Busy("the server is busy; retry later")
                    self.queue.appendleft(task)
                    self.queue_cv.notify()
                    return
            super().add_task(task)

    dispatcher = Dispatcher()
    dispatcher.set_thread_count(workers)
    return dispatcher



def make_server(run: Path, host: str = "127.0.0.1", port: int = 8501,
                workers: int = WORKERS, **server_options) -> tuple[Server, Model]:
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port (0-65535; 0 picks a free one)")
    name, path = find_export(run)
    model = Model(name, path)
    try:
        server = Server(make_app(model), host, port, workers=workers, **server_options)

    except OSError as exc:  # busy port, an address this machine does not have, no such host
        why = exc.strerror or str(exc) or type(exc).__name__
        hint = ("; another process listens there: choose another --port"
                if exc.errno == errno.EADDRINUSE else "")
        raise RunError(f"cannot listen on {host}:{port}: {why}{hint}") from exc
    return server, model


def run(run_dir: Optional[str], runs_root: str, experiment: str, host: str, port: int,
        workers: int = WORKERS) -> None:
    deploy_run = runs.resolve(runs_root, experiment, "deploy", run_dir)
    server, model = make_server(deploy_run, host, port, workers)
    from pretrainer import errors

    sigs = ", ".join(sorted(model.signatures))
    try:  # (from the line on: a stop signal right after it is a stop, too)
        info(f"serving {esc(model.path)} at http://{host}:{server.server_address[1]}/v1/"
             f"models/{model.name} (POST :predict; signatures {sigs}); Ctrl-C stops")
        server.serve_forever()

    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: a server's way to stop, not a failure
        errors.stop_requested = None
        info("serve: stopped")
    finally:
        server.server_close()

