"""serve: a local HTTP server that speaks TF Serving's REST API for a deployed SavedModel.

    POST /v1/models/<name>[/versions/<v>]:predict
    GET  /v1/models/<name>[/versions/<v>]            version status
    GET  /v1/models/<name>[/versions/<v>]/metadata   the signature defs

Requests and responses follow TF Serving's REST API documentation: the row format
(`{"instances": [...]}`, each instance a value or an object of named inputs) answers
`{"predictions": [...]}`; the columnar format (`{"inputs": value or {name: value}}`)
answers `{"outputs": ...}`; `signature_name` picks a signature (default
`serving_default`); a `{"b64": "..."}` value feeds a string input (the image export's
`serve_bytes` signature decodes PNG/JPEG/GIF/BMP in its graph, as TF Serving would run
it). Integer inputs take JSON integers only: float pixels sent to a uint8 signature
are a 400, never rounded. Errors are `{"error": "..."}` with a 4xx code.

Every modality the tool trains is served: images, text (TensorFlow Text's ops are
registered first, as TF Serving's model server links them) and table rows (one
named input per CSV column). A fixed pool of worker threads answers connections,
each socket has a timeout, and client faults (resets, timeouts, bad JSON) are
answered or dropped without a traceback. Python's http.server suffices for a local
single-model server and adds no dependency.
"""

from __future__ import annotations

import base64
import binascii
import errno
import io
import json
import queue
import selectors
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Optional

import numpy as np

from pretrainer import runs
from pretrainer.console import esc, info
from pretrainer.errors import ConfigError, RunError

MAX_BODY_BYTES = 16 * 2**20
DRAIN_IDLE_S = 0.5  # a refused body: stop reading it after this long without a byte
MAX_ELEMENTS = 2**25  # numbers in one request's tensors (a few hundred large images)
SOCKET_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 65536  # request line + headers; more goes to a worker, which refuses it
WORKERS = 8
BACKLOG = 64  # connections waiting for a worker; beyond this a 503


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
                else:
                    raise BadRequest(f"{key} is a string input: send text or "
                                     f"{{\"b64\": \"...\"}}, received {json.dumps(v)[:40]}")
            return np.array(out, dtype=object)
        if any(_is_b64(v) for v in values):
            raise BadRequest(f"{key} takes {spec.dtype.name} numbers, not b64 bytes; encoded "
                             f"images go to a string signature (\"signature_name\": "
                             f"\"serve_bytes\")")
        integer = spec.dtype.is_integer
        _check_leaves(values, integer)
        try:
            arr = np.asarray(values, dtype=np.int64 if integer else np.float64)
        except (ValueError, OverflowError) as exc:
            raise BadRequest(f"{key}: the examples have different shapes (one tensor needs "
                             f"one shape; images of other sizes can be sent as b64 bytes to "
                             f"serve_bytes)") from exc
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
            first = (exc.message or "").strip().splitlines()[:1] or ["invalid input"]
            raise BadRequest(first[0][:300]) from exc
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

class _Prefixed(io.RawIOBase):
    """A socket's byte stream with bytes already read from it put back in front."""

    def __init__(self, prefix: bytes, sock):
        self.prefix, self.sock = memoryview(prefix), sock

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if len(self.prefix):
            n = min(len(b), len(self.prefix))
            b[:n] = self.prefix[:n]
            self.prefix = self.prefix[n:]
            return n
        return self.sock.recv_into(b)


def make_handler(model: Model):
    prefix = f"/v1/models/{model.name}"
    versioned = f"{prefix}/versions/{model.version}"

    class Handler(BaseHTTPRequestHandler):
        server_version = "pretrainer-serve"
        protocol_version = "HTTP/1.1"  # answers `Expect: 100-continue` (curl, large bodies)
        timeout = SOCKET_TIMEOUT_S  # a stalled client frees its worker after this

        def setup(self):
            super().setup()
            head = self.server.heads.get(self.request)
            if head:  # the watcher read the request head: read it again from there
                self.rfile = io.BufferedReader(_Prefixed(head, self.connection))

        def _send(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode("utf-8")
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
            except OSError:  # the client left: nothing to answer
                pass
            self.close_connection = True

        def log_message(self, fmt, *args):  # quiet: one line per request is noise here
            pass

        def _length(self) -> Optional[int]:
            try:
                return int(self.headers.get("Content-Length", ""))
            except ValueError:
                return None

        def handle_expect_100(self):
            length = self._length()
            if length is not None and length > MAX_BODY_BYTES:
                self._send(413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
                return False
            return super().handle_expect_100()

        def _drain(self, length: int) -> None:
            """Read and drop a refused body, so the client gets to read our answer
            (closing with unread data makes the kernel reset the connection). A client
            that sends nothing for DRAIN_IDLE_S is answered then: one that claims a
            terabyte and sends none waited SOCKET_TIMEOUT_S for its 413."""
            deadline = time.monotonic() + SOCKET_TIMEOUT_S
            left = length
            try:
                self.connection.settimeout(DRAIN_IDLE_S)
                while left > 0 and time.monotonic() < deadline:
                    chunk = self.rfile.read1(min(left, 1 << 16))
                    if not chunk:
                        break
                    left -= len(chunk)
            except OSError:
                pass

        def do_GET(self):
            path = self.path.split("?", 1)[0].rstrip("/")
            if path in (prefix, versioned):
                return self._send(200, model.status())
            if path in (f"{prefix}/metadata", f"{versioned}/metadata"):
                return self._send(200, model.metadata())
            self._send(404, {"error": f"Unknown path {path}. Model: {prefix}"})

        def do_POST(self):
            path = self.path.split("?", 1)[0]
            length = self._length()
            if path not in (f"{prefix}:predict", f"{versioned}:predict"):
                if length:
                    self._drain(length)
                return self._send(404, {"error": f"Unknown path {path}. Use POST "
                                                 f"{prefix}:predict"})
            if length is None:
                return self._send(411, {"error": "a Content-Length header is required"})
            if length <= 0:
                return self._send(400, {"error": "empty body"})
            if length > MAX_BODY_BYTES:
                self._drain(length)
                return self._send(413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
            try:
                raw = self.rfile.read(length)
            except OSError:
                self.close_connection = True
                return
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                return self._send(400, {"error": "the body is not valid JSON"})
            except RecursionError:
                return self._send(400, {"error": "the JSON is nested too deeply"})
            try:
                return self._send(200, model.predict(body))
            except BadRequest as exc:
                return self._send(400, {"error": str(exc)})
            except RecursionError:
                return self._send(400, {"error": "the JSON is nested too deeply"})
            except Exception as exc:  # a server must answer, not die; one line, no traceback
                print(f"serve: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
                return self._send(500, {"error": f"{type(exc).__name__}: {str(exc)[:200]}"})

    return Handler


class PooledHTTPServer(HTTPServer):
    """HTTPServer answering on a fixed pool of threads.

    ThreadingHTTPServer starts one thread per connection, without bound, and a client
    that connects and says nothing holds its thread. Here one thread reads new
    connections' request heads without blocking (selectors) and hands a connection to
    the pool only once its head is complete; one without a complete head after
    SOCKET_TIMEOUT_S is closed. At most MAX_WAITING connections wait and `workers +
    backlog` are queued for or in a worker; beyond either a client gets a 503 at once.
    """

    MAX_WAITING = 512

    def __init__(self, address, handler, workers: int = WORKERS, backlog: int = BACKLOG):
        super().__init__(address, handler)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="serve")
        self.slots = threading.BoundedSemaphore(workers + backlog)
        self.heads: dict = {}  # socket -> the bytes the watcher already read from it
        self._new: "queue.SimpleQueue" = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._closing = False
        self._watcher = threading.Thread(target=self._watch, name="serve-watch", daemon=True)
        self._watcher.start()

    @staticmethod
    def _busy(request) -> None:
        body = b'{"error": "the server is busy; retry later"}'
        try:
            request.settimeout(1.0)
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                            b"application/json\r\nConnection: close\r\nContent-Length: "
                            + str(len(body)).encode() + b"\r\n\r\n" + body)
        except OSError:
            pass

    def process_request(self, request, client_address):
        self._new.put((request, client_address))
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _watch(self) -> None:
        """Read each new connection's request head without blocking; hand it to a worker
        once the head is complete (a silent or slow client never holds a thread)."""
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        waiting: dict = {}  # socket -> [address, deadline, bytes so far]
        while not self._closing:
            for key, _ in sel.select(timeout=0.5):
                sock = key.fileobj
                if sock is self._wake_r:
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                    continue
                entry = waiting[sock]
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:  # the client left before finishing its request
                    sel.unregister(sock)
                    del waiting[sock]
                    self.shutdown_request(sock)
                    continue
                entry[2] += chunk
                if b"\r\n\r\n" in entry[2] or len(entry[2]) > MAX_HEAD_BYTES:
                    sel.unregister(sock)
                    del waiting[sock]
                    sock.setblocking(True)
                    self._dispatch(sock, entry[0], bytes(entry[2]))
            while not self._new.empty():
                request, address = self._new.get()
                if len(waiting) >= self.MAX_WAITING:
                    self._busy(request)
                    self.shutdown_request(request)
                    continue
                request.setblocking(False)
                sel.register(request, selectors.EVENT_READ)
                waiting[request] = [address, time.monotonic() + SOCKET_TIMEOUT_S, bytearray()]
            now = time.monotonic()
            for sock in [r for r, e in waiting.items() if e[1] < now]:
                sel.unregister(sock)
                del waiting[sock]
                self.shutdown_request(sock)  # no complete request in time
        for sock in waiting:
            self.shutdown_request(sock)
        sel.close()

    def _dispatch(self, request, client_address, head: bytes) -> None:
        if not self.slots.acquire(blocking=False):
            self._busy(request)
            self.shutdown_request(request)
            return
        self.heads[request] = head
        try:
            self.pool.submit(self._work, request, client_address)
        except RuntimeError:  # the pool is shut down: the server is closing
            self.slots.release()
            self.shutdown_request(request)

    def _work(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - resets and timeouts are the client's, not ours
            pass
        finally:
            self.heads.pop(request, None)
            self.shutdown_request(request)
            self.slots.release()

    def handle_error(self, request, client_address):  # no tracebacks for client faults
        pass

    def server_close(self):
        if not hasattr(self, "_watcher"):  # the bind failed inside HTTPServer.__init__
            super().server_close()
            return
        self._closing = True
        super().server_close()
        self._watcher.join(timeout=5)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._wake_r.close()
        self._wake_w.close()


def make_server(run: Path, host: str = "127.0.0.1", port: int = 8501,
                workers: int = WORKERS) -> tuple[PooledHTTPServer, Model]:
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port (0-65535; 0 picks a free one)")
    name, path = find_export(run)
    model = Model(name, path)
    try:
        server = PooledHTTPServer((host, port), make_handler(model), workers=workers)
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
    sigs = ", ".join(sorted(model.signatures))
    info(f"serving {esc(model.path)} at http://{host}:{server.server_address[1]}/v1/models/"
         f"{model.name} (POST :predict; signatures {sigs}); Ctrl-C stops")
    try:
        server.serve_forever()
    finally:
        server.server_close()
