"""Our reading of extra_model_paths.yaml (models/model_files/model_paths.py, used by the download command) gives the same
folders, in the same order, as ComfyUI's own loader (utils/extra_config.py + folder_paths)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from salient_background.models.model_files import model_paths

COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "").strip()
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON", "").strip() or sys.executable
FOLDERS = ["checkpoints", "controlnet", "salient", "sams"]

YAML = """\
a111:
    base_path: ../sd-webui/
    checkpoints: models/Stable-diffusion
    controlnet: models/ControlNet
    sams: |
         models/sam
         extensions/sam/models
mine:
    base_path: {base}
    is_default: true
    salient: salient_models
    sams: sams
loose:
    sams: /abs/sams
    salient: rel/salient
"""

COMFY_SIDE = textwrap.dedent(
    """
    import json, os, sys
    root, yaml_path, folders = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    sys.path.insert(0, root)
    os.chdir(root)
    import utils.install_util  # noqa: F401  (as main.py does: keeps comfy/ from shadowing utils/)
    import folder_paths
    # what the pack's nodes do for their own folders (register_model_folder) before ComfyUI reads the YAML
    for name in ("salient", "sams"):
        folder_paths.folder_names_and_paths[name] = ([os.path.join(folder_paths.models_dir, name)], set())
    from utils.extra_config import load_extra_path_config
    default_yaml = os.path.join(root, "extra_model_paths.yaml")  # main.py reads this one first
    if os.path.isfile(default_yaml):
        load_extra_path_config(default_yaml)
    load_extra_path_config(yaml_path)
    print(json.dumps({f: folder_paths.get_folder_paths(f) for f in folders}))
    """
)


def test_extra_model_paths_parity_with_comfyui(tmp_path):
    yaml_path = tmp_path / "conf" / "extra_model_paths.yaml"
    yaml_path.parent.mkdir()
    yaml_path.write_text(YAML.format(base=tmp_path / "central"))
    result = subprocess.run(
        [COMFYUI_PYTHON, "-c", COMFY_SIDE, COMFYUI_PATH, str(yaml_path), ",".join(FOLDERS)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    comfy = json.loads(result.stdout.strip().splitlines()[-1])
    ours = model_paths.discover(comfyui_root=COMFYUI_PATH, extra_configs=[str(yaml_path)], use_env=False)
    for folder in FOLDERS:
        theirs = [os.path.normpath(p) for p in comfy[folder]]
        if folder == "controlnet":  # ComfyUI also lists models/t2i_adapter there; we only download into controlnet
            theirs = [p for p in theirs if not p.endswith("t2i_adapter")]
        assert ours.paths(folder) == theirs, folder
