import json
import subprocess
import sys

import pytest
from conftest import ROOT

# The slower harnesses run with `make bench` (which checks them first), not in `make test`:
# the suite must stay well under 15 minutes on 2 cores. run.py's smoke stays here.
slow_harness = pytest.mark.bench


def _smoke(script: str, out, *extra: str, timeout: int = 600):
    """Run a benchmark harness in --smoke mode; (its stdout, the JSON it wrote)."""
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", "--smoke", *extra, "--out",
                           str(out)], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_benchmark_harness_smoke(tmp_path):
    stdout, results = _smoke("run.py", tmp_path / "bench.json")
    assert "| seed_recipe |" in stdout and "| startup |" in stdout
    for name in ("startup", "seed_recipe", "input_pipeline"):
        assert results[name]["speedup"] > 0


@slow_harness
def test_collect_read_benchmark_smoke(tmp_path):
    _, results = _smoke("collect_read.py", tmp_path / "cr.json")
    assert results["collect_images_per_s"] > 0 and results["rss_10x_mib"] > 0


@slow_harness
def test_throughput_benchmark_smoke(tmp_path):
    _, results = _smoke("throughput.py", tmp_path / "tp.json", timeout=900)
    assert results["ceilings_gflop_per_s"]["float32"] > 0
    pretexts = {(r["pretext"], r["precision"]) for r in results["pretext"]}
    assert ("simclr", "mixed_bfloat16") in pretexts and ("causal_lm", "float32") in pretexts
    assert all(r["train_flops_per_sample"] > 0 for r in results["pretext"])
    assert results["memory"]["ratio"] > 0
    assert results["export"]["p50_ms"]["keras"] > 0 and "litert" in results["export"]["p50_ms"]


@slow_harness
def test_precision_benchmark_smoke(tmp_path):
    _, results = _smoke("precision.py", tmp_path / "p.json", "--models",
                        "seed_cnn_classifier,autoencoder")
    rows = results["rows"]
    assert {r["model"] for r in rows} == {"seed_cnn_classifier", "autoencoder"}
    assert all(r["samples_per_s"]["mixed_bfloat16"] > 0 for r in rows)


@slow_harness
def test_seed_at_size_benchmark_smoke(tmp_path):
    from pathlib import Path

    if not (Path("/usr/share/datasets/fashion-mnist") / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs Debian's dataset-fashion-mnist")
    stdout, results = _smoke("seed_at_size.py", tmp_path / "s.json", timeout=900)
    assert "| seed recipe (Keras, float32) |" in stdout
    assert results["speedup_auto"] > 0 and 0 <= results["rows"]["auto"]["test_accuracy"] <= 1


@slow_harness
def test_memory_scale_benchmark_smoke(tmp_path):
    _, results = _smoke("memory_scale.py", tmp_path / "m.json")
    small, large = results["rows"]
    assert large["images"] == 4 * small["images"]
    assert results["ratio_cached"] > 0 and results["ratio_streamed"] > 0


def test_summary_prints_a_table_per_size_and_ignores_smoke_runs(tmp_path):
    seed = {"baseline_s": 5.6, "candidate_s": 5.2, "speedup": 1.08, "images": 6000,
            "epochs": 5, "data": "fashion_bundled", "test_accuracy_seed": 0.818,
            "test_accuracy_pretrainer": 0.802, "what": "seed CNN"}
    (tmp_path / "results.json").write_text(json.dumps({
        "seed_recipe": seed, "seed_recipe_bf16": {**seed, "candidate_s": 6.1, "speedup": 0.92},
        "_meta": {"smoke": False}}))
    rows = {k: {"wall_s": w, "fit_s": w - 8, "test_accuracy": 0.888}
            for k, w in (("seed", 54.1), ("float32", 60.0), ("auto", 46.1))}
    (tmp_path / "seed_at_size.json").write_text(json.dumps({
        "images": 60000, "epochs": 3, "rows": rows, "auto_policy": "mixed_bfloat16",
        "smoke": False, "cpu": "AMD EPYC 9B14, 2 core(s), CPU with AVX512-BF16"}))
    (tmp_path / "memory_scale.json").write_text(json.dumps({"smoke": True, "rows": []}))
    out = subprocess.run([sys.executable, "benchmarks/summary.py", "--dir", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "| fashion_bundled, 6,000 images x 5 (in one process) | 5.6 s | 5.2 s (1.08x) |" \
        in out.stdout
    assert "| full Fashion-MNIST, 60,000 images x 3 (whole process) | 54.1 s | 60.0 s (0.90x) " \
        "| 46.1 s (1.17x) | 88.8 / 88.8 / 88.8 % | AMD EPYC 9B14, 2 core(s), CPU with " \
        "AVX512-BF16 |" in out.stdout  # each row names the CPU it was measured on
    assert "(in one process) | 5.6 s" in out.stdout and "| (not recorded) |" in out.stdout
    assert "memory_scale.json: only a --smoke run" in out.stdout


@slow_harness
def test_serve_latency_benchmark_smoke(tmp_path):
    stdout, results = _smoke("serve_latency.py", tmp_path / "serve.json")
    assert set(results["latency_ms"]["batch_1"]) == {"waitress", "stdlib"}
    assert results["requests_per_s"]["waitress"] > 0 and "8 clients" in stdout


def test_the_gpu_check_runs_on_a_cpu_and_prints_its_table(tmp_path):
    """benchmarks/gpu_check.sh --quick, as CI runs it: every section measured on the CPU
    (on a lent GPU the same script, without --quick, is the device check)."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["model"] for r in result["precision"]] == ["seed_cnn_classifier", "simclr",
                                                         "masked_lm"]
    assert all(r["samples_per_s"]["float32"] > 0 for r in result["precision"])
    assert result["input_vs_step"]["train_examples_per_s"] > 0 and result["xla"]["xla_off"] > 0
    for line in ("auto picks:", "| masked_lm |", "input pipeline alone", "XLA on"):
        assert line in proc.stdout


@slow_harness
def test_mlm_epochs_benchmark_smoke(tmp_path):
    stdout, results = _smoke("mlm_epochs.py", tmp_path / "m.json", timeout=900)
    assert "| plain |" in stdout and "| pretrainer |" in stdout and results["cpu"]
    assert results["fit_s"]["plain"] > 0 and results["fit_s"]["pretrainer"] > 0
    assert all(1 < p < float("inf") for p in results["val_perplexity"].values())


@slow_harness
def test_beam_collect_benchmark_smoke(tmp_path):
    pytest.importorskip("apache_beam")
    stdout, results = _smoke("beam_collect.py", tmp_path / "beam.json")
    assert [r["identical"] for r in results["rows"]] == [True, True]
    assert "| 2,000 |" in stdout


@slow_harness
def test_pretext_epochs_benchmark_smoke(tmp_path):
    stdout, results = _smoke("pretext_epochs.py", tmp_path / "pe.json")
    assert results["simclr"]["seconds_per_epoch"] > 0
    assert results["text_finetune"]["fit_seconds"] > 0
    assert "| SimCLR pretraining" in stdout and "before issue 29" in stdout
