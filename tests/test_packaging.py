import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_ships_configs_and_bundled_data(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("pretrainer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("pretrainer/configs/fashion_ae.yaml", "pretrainer/configs/cifar_cnn.yaml",
                     "pretrainer/configs/backbone/conv_ae.yaml",
                     "pretrainer/data/samples/fashion_mnist_small.npz",
                     "pretrainer/data/samples/LICENSE-fashion-mnist.txt",
                     "pretrainer/cli.py"):
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
