"""Serving latency and throughput: `pretrainer serve`'s server (waitress) against the
standard library's threading WSGI server, both running the same TF Serving app on the
same SavedModel (a small CNN on 28x28x1 images), measured in the same run.

    python benchmarks/serve_latency.py [--smoke] [--out benchmarks/serve_latency.json]

- latency: p50/p95 of sequential POST :predict requests (batch 1 and 32), alternating
  rounds between the two servers after a warm-up;
- throughput: requests/s with 8 clients posting at once (batch 1).
Ratios are stdlib / waitress (above 1: waitress is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class _Threading(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def _post(url: str, body: bytes) -> None:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()


def _latency(url: str, body: bytes, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        _post(url, body)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _throughput(url: str, body: bytes, clients: int, each: int) -> float:
    threads = [threading.Thread(target=lambda: [_post(url, body) for _ in range(each)])
               for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return clients * each / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a few requests: checks the harness")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "serve_latency.json")
    args = ap.parse_args()
    requests, rounds, each = (10, 1, 5) if args.smoke else (150, 3, 40)

    import keras

    from pretrainer.data.records import StoreManifest
    from pretrainer.exports import savedmodel
    from pretrainer.precision import cpu_name
    from pretrainer.stages import serve

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)),
                              keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(10, activation="softmax")])
    tmp = Path(tempfile.mkdtemp())
    savedmodel.export(model, tmp / "export" / "m" / "1", StoreManifest.from_json({
        "modality": "image", "shape": [28, 28, 1], "num_classes": 10,
        "class_names": [str(i) for i in range(10)]}))
    ours, served = serve.make_server(tmp, "127.0.0.1", 0)
    threading.Thread(target=ours.serve_forever, daemon=True).start()
    stdlib = make_server("127.0.0.1", 0, serve.make_app(served), server_class=_Threading,
                         handler_class=_Quiet)
    threading.Thread(target=stdlib.serve_forever, daemon=True).start()
    path = f"/v1/models/{served.name}:predict"
    urls = {"waitress": f"http://127.0.0.1:{ours.server_address[1]}{path}",
            "stdlib": f"http://127.0.0.1:{stdlib.server_address[1]}{path}"}
    rng = np.random.default_rng(0)
    results: dict = {"latency_ms": {}, "requests_per_s": {}}
    for batch in (1, 32):
        body = json.dumps({"signature_name": "serve_pixels",
                           "instances": rng.integers(0, 256, (batch, 28, 28, 1)).tolist()}
                          ).encode()
        for url in urls.values():
            _latency(url, body, 10)  # warm-up
        times: dict = {name: [] for name in urls}
        for _ in range(rounds):
            for name, url in urls.items():
                times[name] += _latency(url, body, requests)
        results["latency_ms"][f"batch_{batch}"] = {
            name: {"p50": statistics.median(t), "p95": float(np.percentile(t, 95))}
            for name, t in times.items()}
    body = json.dumps({"signature_name": "serve_pixels",
                       "instances": rng.integers(0, 256, (1, 28, 28, 1)).tolist()}).encode()
    for name, url in urls.items():
        results["requests_per_s"][name] = _throughput(url, body, 8, each)
    ours.shutdown()
    stdlib.shutdown()
    results["_meta"] = {"smoke": args.smoke, "cpus": os.cpu_count(), "cpu": cpu_name()}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"serving on {cpu_name()} ({os.cpu_count()} cores)\n")
    print("| request | waitress p50 / p95 ms | stdlib p50 / p95 ms | p50 ratio stdlib / waitress |")
    print("|---|---|---|---|")
    for key, r in results["latency_ms"].items():
        w, s = r["waitress"], r["stdlib"]
        print(f"| {key.replace('_', ' ')} | {w['p50']:.2f} / {w['p95']:.2f} | "
              f"{s['p50']:.2f} / {s['p95']:.2f} | {s['p50'] / w['p50']:.2f} |")
    rps = results["requests_per_s"]
    print(f"| 8 clients, batch 1 | {rps['waitress']:.0f} req/s | {rps['stdlib']:.0f} req/s | "
          f"{rps['waitress'] / rps['stdlib']:.2f} (throughput, waitress / stdlib) |")


if __name__ == "__main__":
    main()
