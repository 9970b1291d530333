"""The metric models' registry rows and how the metrics find them (models/scoring/metrics/model_files.py): local
files in the ComfyUI ``metrics`` folder, a missing one named with its download command while the others load."""
from __future__ import annotations

import os

import pytest

from salient_background.models.errors import UserFacingError
from salient_background.models.model_files import model_registry
from salient_background.models.model_files.model_paths import discover
from salient_background.models.scoring import metrics
from salient_background.models.scoring.metrics import model_files
from sb_testkit.metric_models import write_lpips_alexnet, write_tiny_clip, write_tiny_dinov2


def test_every_metric_model_is_a_registry_row_in_the_metrics_folder():
    for metric, (group, _) in metrics.METRIC_MODELS.items():
        rows = [model_registry.BY_KEY[k] for k in model_registry.GROUPS[group]]
        assert rows and all(m.folder == "metrics" and m.licence for m in rows), metric
        if len(rows) > 1:  # a model folder: the files a loader needs are all downloaded
            names = {m.filename.split("/", 1)[1] for m in rows}
            assert set(model_files.REQUIRED_FOLDER_FILES[group]) <= names
    assert model_registry.FOLDER_DEFAULT_SUBDIRS["metrics"] == "metrics"
    assert {m.group for m in model_registry.select(["metrics"])} == {
        "metrics_inception", "metrics_lpips_alexnet", "metrics_clip", "metrics_dinov2"}
    # no checksum was read from a public page for these files: none may be recorded
    assert not any(m.verified for m in model_registry.select(["metrics"]))


def test_present_models_are_found_and_the_missing_one_is_named(tmp_path):
    folder = str(tmp_path / "models" / "metrics")
    clip = write_tiny_clip(folder)
    lpips_file = write_lpips_alexnet(folder)
    dino = write_tiny_dinov2(folder)
    os.remove(os.path.join(dino, "model.safetensors"))  # an incomplete folder counts as missing
    found = metrics.available_metric_models(discover(str(tmp_path / "models")))
    assert found["clip"] == clip and found["lpips"] == lpips_file
    for metric, command in (("fid", "metrics-inception"), ("kid", "metrics-inception"),
                            ("object_similarity", "metrics-dinov2")):
        error = found[metric]
        assert isinstance(error, metrics.MetricModelMissing) and isinstance(error, UserFacingError)
        assert error.metric == metric and error.download_command == f"python -m salient_background download {command}"
        assert error.download_command in str(error) and folder in str(error)
    assert "save it as " + os.path.join(folder, "pt_inception-2015-12-05-6726825d.pth") in str(found["fid"])
    with pytest.raises(metrics.MetricModelMissing, match="download metrics-dinov2"):
        metrics.find_metric_model("object_similarity", discover(str(tmp_path / "models")))


def test_a_missing_metric_package_names_the_install_command(tmp_path, monkeypatch):
    import importlib.util

    path = write_lpips_alexnet(str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lpips" else real(name, *a))
    with pytest.raises(metrics.MetricPackageMissing, match=r"salient-background\[metrics\]") as info:
        metrics.load_lpips(path)
    assert isinstance(info.value, UserFacingError) and "lpips" in str(info.value)
