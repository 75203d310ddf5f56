import subprocess
import sys

from conftest import ROOT


def test_benchmark_harness_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--smoke", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| seed_recipe |" in proc.stdout and "| startup |" in proc.stdout
    import json

    results = json.loads(out.read_text())
    for name in ("startup", "seed_recipe", "input_pipeline"):
        assert results[name]["speedup"] > 0


def test_collect_read_benchmark_smoke(tmp_path):
    out = tmp_path / "cr.json"
    proc = subprocess.run([sys.executable, "benchmarks/collect_read.py", "--smoke", "--out",
                           str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    results = json.loads(out.read_text())
    assert results["collect_images_per_s"] > 0 and results["rss_10x_mib"] > 0


def test_throughput_benchmark_smoke(tmp_path):
    out = tmp_path / "tp.json"
    proc = subprocess.run([sys.executable, "benchmarks/throughput.py", "--smoke", "--out",
                           str(out)], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    results = json.loads(out.read_text())
    assert results["ceilings_gflop_per_s"]["float32"] > 0
    pretexts = {(r["pretext"], r["precision"]) for r in results["pretext"]}
    assert ("simclr", "mixed_bfloat16") in pretexts and ("causal_lm", "float32") in pretexts
    assert all(r["train_flops_per_sample"] > 0 for r in results["pretext"])
    assert results["memory"]["ratio"] > 0
    assert results["export"]["p50_ms"]["keras"] > 0 and "litert" in results["export"]["p50_ms"]


def test_precision_benchmark_smoke(tmp_path):
    out = tmp_path / "p.json"
    proc = subprocess.run([sys.executable, "benchmarks/precision.py", "--smoke", "--models",
                           "seed_cnn_classifier,autoencoder", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    rows = json.loads(out.read_text())["rows"]
    assert {r["model"] for r in rows} == {"seed_cnn_classifier", "autoencoder"}
    assert all(r["samples_per_s"]["mixed_bfloat16"] > 0 for r in rows)
