import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_ships_configs_and_bundled_data(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the metadata is current: no ~330 lines of setuptools warnings before `make demo`
    for noise in ("SetuptoolsDeprecationWarning", "is absent from the `packages`"):
        assert noise not in proc.stdout + proc.stderr, noise
    (wheel,) = tmp_path.glob("pretrainer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("pretrainer/configs/fashion_ae.yaml", "pretrainer/configs/cifar_cnn.yaml",
                     "pretrainer/configs/backbone/conv_ae.yaml",
                     "pretrainer/data/samples/fashion_mnist_small.npz",
                     "pretrainer/data/samples/LICENSE-fashion-mnist.txt",
                     "pretrainer/cli/running.py", "pretrainer/config/options.py"):
        assert expected in names, expected
    assert any(n.endswith("entry_points.txt") for n in names)
    for init in (ROOT / "pretrainer").rglob("__init__.py"):  # every subpackage ships
        assert init.relative_to(ROOT).as_posix() in names, init
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                           "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    code = ("import pretrainer.config as c; d = c.builtin_config_dir(); "
            "assert 'site' in str(d), d; print(c.compose('fashion_ae').experiment)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "fashion_ae"


def test_gpu_extra_names_an_extra_tensorflow_has():
    import importlib.metadata

    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras["gpu"] == ["tensorflow[and-cuda]==2.21.*"]
    assert "and-cuda" in importlib.metadata.metadata("tensorflow").get_all("Provides-Extra")


def test_tpu_install_list_never_pulls_the_cpu_tensorflow_wheel(tmp_path):
    """`make install-tpu`'s third step, resolved by pip (a dry run against PyPI)."""
    import json

    import pytest

    deps = subprocess.run([sys.executable, str(ROOT / "scripts" / "deps.py"),
                           "--without-tensorflow"], capture_output=True, text=True, timeout=60)
    assert deps.returncode == 0, deps.stderr
    wanted = deps.stdout.split()
    assert not {"tensorflow", "tensorflow-text", "keras-hub"} & {
        w.split("=")[0].split(">")[0].split("<")[0] for w in wanted}
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run",
                           "--ignore-installed", "--quiet", "--report", str(tmp_path / "r.json"),
                           *wanted], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and ("connection" in proc.stderr.lower()
                                 or "network" in proc.stderr.lower()):
        pytest.skip("PyPI is not reachable from here")
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {i["metadata"]["name"].lower() for i in
             json.loads((tmp_path / "r.json").read_text())["install"]}
    assert "keras" in names and not any(n.startswith("tensorflow") for n in names)
