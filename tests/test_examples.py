import subprocess

from conftest import ROOT


def test_example_scripts_parse():
    for script in sorted((ROOT / "examples").glob("*.sh")):
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script.name}: {proc.stderr}"


def test_multi_worker_example_builds_tf_config():
    proc = subprocess.run(
        ["bash", "-c", "sed -n '/^workers=/,/^echo/p' examples/multi_worker.sh > /tmp/mw.sh; "
         "HOSTS=a,b PORT=7 INDEX=1 bash -c 'source /tmp/mw.sh'"],
        cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert '"worker": ["a:7", "b:7"]' in proc.stdout and '"index": 1' in proc.stdout
