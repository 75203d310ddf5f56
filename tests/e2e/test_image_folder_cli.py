"""A user's own folder of images, end to end through the CLI."""

import json

import pytest
from conftest import run_cli
from test_folders import make_class_folder

pytestmark = pytest.mark.e2e


def test_pipeline_on_an_image_folder_with_a_broken_file(tmp_path):
    root = make_class_folder(tmp_path / "photos", per_class=30)
    (root / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    proc = run_cli(["pipeline", "--config", "folder_ae", f"data.path={root}",
                    "data.image_size=[16,16]", "trainer.epochs=1", "finetune.epochs=2",
                    "backbone.filters=[8,16]", "backbone.latent_dim=16",
                    "trainer.verbose=false", "deploy.parity_samples=16"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "skipped 1 unreadable file" in proc.stderr
    manifest = json.loads((tmp_path / "data" / "image_folder" / "manifest.json").read_text())
    assert manifest["shape"] == [16, 16, 3]
    assert manifest["class_names"] == ["cats", "dogs", "owls"]
    assert manifest["skipped"]["files"][0]["file"] == "cats/broken.jpg"
    (dep,) = (tmp_path / "runs" / "folder_ae").glob("deploy-*")
    assert json.loads((dep / "export" / "parity.json").read_text())["saved_model"]["passed"]
