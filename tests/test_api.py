from conftest import ROOT, run_python


def test_notebook_api_runs_a_stage_without_tensorflows_startup_noise(tmp_path):
    code = ("import pretrainer.api as pt\n"
            "cfg = pt.config('house_linear', ['finetune.epochs=3', 'trainer.verbose=false'])\n"
            "ft = pt.run('finetune', cfg)\n"
            "print('RUN', ft, (ft / 'DONE').is_file())\n"
            "try:\n"
            "    pt.config('house_linear', ['trainer.epoch=3'])\n"
            "except Exception as e:\n"
            "    print('ERR', type(e).__name__)\n")
    proc = run_python(code, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RUN" in proc.stdout and proc.stdout.split("RUN")[1].split()[1] == "True"
    assert "ERR ConfigError" in proc.stdout
    for noise in ("oneDNN", "cuda", "cuInit", "absl::InitializeLog"):
        assert noise not in proc.stderr, proc.stderr[-1500:]
