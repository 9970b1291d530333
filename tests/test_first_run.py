"""The README's main-job command, run as written (plus small-size flags), against a local model "hub".

The README's quick-start chain (download -> generate -> evaluate) is read from the README itself; the registry's
URLs are pointed at a local HTTP server serving the tiny random models in the real file layouts, with their real
checksums, so the download step runs the same verified code path as for a user. Offline, the chain stops at the
download step with the manual alternative and no traceback.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil

import pytest
from PIL import Image

from salient_background import cli
from salient_background.models.model_files import model_registry
from sb_testkit.local_hub import local_hub as serve_registry, tiny_stand_in

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = "workflows/inputs/example_product.png"
# small and fast on the tiny models; appended, so they override the README's values
OVERRIDES = {
    "generate": ["--size", "64", "--steps", "2", "--device", "cpu", "--no-progress"],
    "evaluate": ["--device", "cpu", "--no-progress"],
    "download": ["--quiet"],
}


def readme_main_job() -> list[list[str]]:
    """The ``python -m salient_background ...`` steps of the README's quick-start main-job command, in order."""
    readme = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("<!-- section: quickstart -->", 1)[1].split("<!-- /section: quickstart -->", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    block = next(b for b in blocks if "salient_background download" in b)
    steps = [s.strip() for s in block.replace("\\\n", " ").split("&&")]
    return [shlex.split(s)[3:] for s in steps if s.startswith("python -m salient_background ")]


def test_readme_main_job_is_download_generate_evaluate_on_the_shipped_example():
    steps = readme_main_job()
    assert [s[0] for s in steps] == ["download", "generate", "evaluate"]
    assert EXAMPLE in steps[1] and os.path.isfile(os.path.join(REPO_ROOT, EXAMPLE))
    with Image.open(os.path.join(REPO_ROOT, EXAMPLE)) as im:
        assert im.size == (512, 512) and os.path.getsize(os.path.join(REPO_ROOT, EXAMPLE)) < 100_000


@pytest.fixture
def local_hub(tiny_sd, inspyrenet_fast_checkpoint, monkeypatch):  # noqa: F811
    """Registry rows of the 'generate' selection served from 127.0.0.1 with the tiny files' real checksums."""
    with serve_registry("generate", monkeypatch,
                        lambda m: tiny_stand_in(m, tiny_sd, inspyrenet_fast_checkpoint)) as server:
        yield server


def _run(steps, tmp_path, monkeypatch) -> int:
    """Like the shell's ``a && b && c`` from the repository root (copied example, relative paths)."""
    os.makedirs(tmp_path / os.path.dirname(EXAMPLE), exist_ok=True)
    shutil.copy(os.path.join(REPO_ROOT, EXAMPLE), tmp_path / EXAMPLE)
    monkeypatch.chdir(tmp_path)
    for argv in steps:
        code = cli.main(argv + OVERRIDES[argv[0]])
        if code != 0:
            return code
    return 0


def test_first_run_downloads_generates_and_scores(local_hub, tmp_path, monkeypatch):
    assert _run(readme_main_job(), tmp_path, monkeypatch) == 0
    first_run = tmp_path / "outputs" / "first_run"
    generated = first_run / "generated" / "example_product_s0.png"
    with Image.open(generated) as im:
        assert im.size == (64, 64)
    with open(first_run / "expansion" / "expansion.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1
    numbers = {k: v for k, v in rows[0].items() if k.startswith("expansion")}
    assert numbers and all(float(v) >= 0 for v in numbers.values() if v not in ("", None))
    assert json.load(open(first_run / "expansion" / "summary.json"))
    # every downloaded file went through the verified path: the hub saw one plain request per file
    assert len(local_hub.requests) == len(model_registry.select(["generate"]))
    assert all(rng is None for _, rng in local_hub.requests)


def test_first_run_offline_stops_at_the_download_step_with_the_manual_alternative(
        local_hub, tmp_path, monkeypatch, capsys):
    local_hub.stop()  # the hosts are unreachable now
    assert _run(readme_main_job(), tmp_path, monkeypatch) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "Manual alternative: download " in err and os.path.join("outputs", "models", "salient") in err
    assert not (tmp_path / "outputs" / "first_run").exists()  # generate never ran
