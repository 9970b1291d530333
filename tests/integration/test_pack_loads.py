"""The pack inside a real ComfyUI: it imports from outside ComfyUI's tree, every node is served by
/object_info under our category, and our model folders list only weight files from the extra_model_paths
folders (see conftest.py for the server)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from salient_background.models.networks.checkpoint_io import WEIGHT_SUFFIXES
from salient_background.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

# model folders the pack registers itself (ComfyUI's own, such as controlnet, already filter extensions)
OWN_MODEL_FOLDERS = ["salient", "sams"]


def test_pack_imports_without_failure(comfy):
    lines = comfy.pack_import_lines()
    assert lines, f"ComfyUI's import-times table does not name {comfy.pack_module_path}:\n{comfy.log_tail(150)}"
    assert not [line for line in lines if "IMPORT FAILED" in line], "\n".join(lines)
    log = comfy.log_text()
    assert f"Cannot import {comfy.pack_module_path}" not in log
    # the pack was found through the extra_model_paths custom_nodes entry, i.e. from outside ComfyUI's tree
    assert f"Adding extra search path custom_nodes {comfy.custom_nodes_dir}" in log
    assert not Path(comfy.pack_module_path).resolve().is_relative_to(comfy.root)


def test_object_info_lists_every_node_under_our_category(comfy):
    info = comfy.object_info()
    missing = sorted(set(NODE_CLASS_MAPPINGS) - set(info))
    assert not missing, f"/object_info lacks {missing}"
    for node_id in NODE_CLASS_MAPPINGS:
        entry = info[node_id]
        assert node_id.startswith("SalientBG_"), node_id
        assert entry["category"].startswith("Salient Background"), (node_id, entry["category"])
        assert entry["display_name"] == NODE_DISPLAY_NAME_MAPPINGS.get(node_id, node_id), node_id
        # loaded as a custom node under the clone's folder name ("main" here), not as an installed package
        assert entry["python_module"] == f"custom_nodes.{Path(comfy.pack_module_path).name}", entry["python_module"]
    # no node of ours is served that the pack does not declare (stale ids, duplicates from a second copy)
    ours = {k for k, v in info.items() if v.get("category", "").startswith("Salient Background")}
    assert ours == set(NODE_CLASS_MAPPINGS)


def _list_inputs(entry: dict):
    for section in ("required", "optional"):
        for name, spec in entry.get("input", {}).get(section, {}).items():
            if isinstance(spec, list) and spec and isinstance(spec[0], list):
                yield name, spec[0]


def test_model_folders_list_only_weight_files_from_extra_model_paths(comfy):
    models = comfy.models_dir
    planted = {}
    for folder in OWN_MODEL_FOLDERS:
        d = models / folder
        (d / f"zz_{folder}_notes.txt").write_text("not a model")
        (d / f"zz_{folder}_readme.md").write_text("not a model")
        (d / f"zz_{folder}_random.pth").write_bytes(os.urandom(64))
        (d / "zz_sub").mkdir(exist_ok=True)
        (d / "zz_sub" / f"zz_{folder}_nested.safetensors").write_bytes(os.urandom(64))
        planted[folder] = {f"zz_{folder}_random.pth", f"zz_sub/zz_{folder}_nested.safetensors"}
    # the second path of the multi-line `salient:` value in the YAML
    (models / "salient_more" / "zz_salient_second_path.sft").write_bytes(os.urandom(64))
    (models / "salient_more" / "zz_salient_second_path.json").write_text("{}")
    planted["salient"].add("zz_salient_second_path.sft")

    # ComfyUI's own view of the folders: the YAML paths first, the default models/<folder> kept
    folders = {f["name"]: f["folders"] for f in comfy.get_json("/experiment/models")}
    assert folders["salient"][:2] == [str(models / "salient"), str(models / "salient_more")], folders["salient"]
    assert str(comfy.root / "models" / "salient") in folders["salient"], folders["salient"]
    assert folders["sams"][0] == str(models / "sams"), folders["sams"]

    for folder in OWN_MODEL_FOLDERS:
        files = comfy.get_json(f"/models/{folder}")
        assert planted[folder] <= set(files), (folder, files)
        assert all(f.lower().endswith(WEIGHT_SUFFIXES) for f in files), (folder, files)

    # what a user sees in the loader nodes' file lists
    info = comfy.object_info()
    seen = set()
    for node_id in NODE_CLASS_MAPPINGS:
        for name, options in _list_inputs(info[node_id]):
            for folder, files in planted.items():
                if files & set(options):
                    seen.add(folder)
                    assert files <= set(options), (node_id, name, options)
                    assert not [o for o in options if o.startswith("zz_") and not o.lower().endswith(WEIGHT_SUFFIXES)], \
                        (node_id, name, options)
    assert "salient" in seen, "no node lists the salient model folder"
    if "SalientBG_SAMLoader" in NODE_CLASS_MAPPINGS:
        assert "sams" in seen, "the SAM loader does not list the sams model folder"


def test_missing_checkpoint_is_rejected_with_the_file_list(comfy, comfy_error):
    """Validation against the served list: a file that is not in the salient folder is a node error."""
    prompt = {"1": {"class_type": "SalientBG_LoadSalientModel",
                    "inputs": {"checkpoint": "no_such_file.pth", "mode": "fast", "precision": "fp32"}},
              "2": {"class_type": "SalientBG_SalientMask",
                    "inputs": {"salient_model": ["1", 0], "image": ["3", 0], "resize": "static", "mask_type": "soft"}},
              "3": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
              "4": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}},
              "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}}
    with pytest.raises(comfy_error) as err:
        comfy.post_prompt(prompt)
    assert "no_such_file.pth" in str(err.value) and "checkpoint" in str(err.value)


def test_register_model_folder_drops_stale_cache_and_resolves_in_folder(comfy, tmp_path):
    """In ComfyUI's own Python: a folder first listed under an extra_model_paths entry (every file) and only
    then registered by the pack must not keep serving the cached list with non-weight files; and a file name
    from that list resolves to the model folder, not to a same-named file in the working directory."""
    import subprocess

    folder = tmp_path / "salient_probe"
    folder.mkdir()
    (folder / "weights.pth").write_bytes(b"0")
    (folder / "notes.txt").write_text("x")
    script = f"""
import importlib.util, json, sys
sys.path.insert(0, {str(comfy.root)!r})
from comfy.cli_args import args
args.cpu = True
import utils.install_util  # noqa: F401  (as ComfyUI's main.py does, before anything imports utils)
import folder_paths
spec = importlib.util.spec_from_file_location("salient_background", {str(Path(comfy.pack_module_path) / "__init__.py")!r},
                                              submodule_search_locations=[{comfy.pack_module_path!r}])
pack = importlib.util.module_from_spec(spec); sys.modules["salient_background"] = pack; spec.loader.exec_module(pack)
from salient_background.nodes import comfy_glue
folder_paths.add_model_folder_path("sb_probe", {str(folder)!r})
before = folder_paths.get_filename_list("sb_probe")
comfy_glue.register_model_folder("sb_probe", "sb_probe")
resolved = comfy_glue.resolve_model_file("sb_probe", "weights.pth", where_to_get="")
print(json.dumps([before, comfy_glue.list_model_files("sb_probe"), folder_paths.get_folder_paths("sb_probe"), resolved]))
"""
    cwd = tmp_path / "cwd"  # a same-named decoy in the working directory must not win over the model folder
    cwd.mkdir()
    (cwd / "weights.pth").write_bytes(b"decoy")
    out = subprocess.run([comfy.python, "-c", script], cwd=str(cwd), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    before, after, paths, resolved = json.loads(out.stdout.strip().splitlines()[-1])
    assert before == ["notes.txt", "weights.pth"]
    assert after == ["weights.pth"]
    assert paths == [str(folder), str(comfy.root / "models" / "sb_probe")]
    assert resolved == str(folder / "weights.pth")
