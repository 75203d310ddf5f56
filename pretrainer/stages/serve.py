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
the TF Serving contract (parsing, signatures, response shapes) is the project's own, in
`pretrainer/exports/rest.py`.
"""

from __future__ import annotations

import errno
import json
import sys
from http import HTTPStatus
from pathlib import Path
from typing import Optional

from pretrainer import runs
from pretrainer.console import esc, info
from pretrainer.errors import ConfigError, RunError
from pretrainer.exports.rest import BadRequest, Model, find_export

MAX_BODY_BYTES = 16 * 2**20
SOCKET_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 65536  # request line + headers; more is a 431
WORKERS = 8
BACKLOG = 64  # requests waiting for a worker; beyond this a 503


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

