"""The pack's model folders are registered with ComfyUI in one place (nodes/comfy_glue.py), against a stand-in
``folder_paths`` module that behaves like ComfyUI's for the calls the glue makes."""
from __future__ import annotations

import os
import sys
import types

import pytest

from salient_background.models.model_files.model_registry import FOLDER_DEFAULT_SUBDIRS
from salient_background.nodes import comfy_glue
from salient_background.nodes.salient_nodes import SALIENT_FOLDER, LoadSalientModel
from salient_background.nodes.sam_nodes import SAM_FOLDER, SAMLoader


def _stand_in_folder_paths(models_dir: str) -> types.ModuleType:
    module = types.ModuleType("folder_paths")
    module.models_dir = models_dir
    module.folder_names_and_paths = {}
    module.filename_list_cache = {}

    def get_folder_paths(name):
        return list(module.folder_names_and_paths[name][0])

    def get_filename_list(name):
        paths, extensions = module.folder_names_and_paths[name]
        found = set()
        for base in paths:
            if os.path.isdir(base):
                found.update(f for f in os.listdir(base)
                             if not extensions or os.path.splitext(f)[1].lower() in extensions)
        return sorted(found)

    def get_full_path(name, filename):
        for base in module.folder_names_and_paths[name][0]:
            if os.path.isfile(os.path.join(base, filename)):
                return os.path.join(base, filename)
        return None

    module.get_folder_paths, module.get_filename_list, module.get_full_path = (
        get_folder_paths, get_filename_list, get_full_path)
    return module


@pytest.fixture
def comfy_folders(tmp_path, monkeypatch):
    models = tmp_path / "models"
    for sub in ("sams", "salient"):
        (models / sub).mkdir(parents=True)
    module = _stand_in_folder_paths(str(models))
    monkeypatch.setitem(sys.modules, "folder_paths", module)
    return module


def test_the_pack_folders_are_named_in_the_model_table():
    assert SALIENT_FOLDER in comfy_glue.PACK_MODEL_FOLDERS and SAM_FOLDER in comfy_glue.PACK_MODEL_FOLDERS
    assert all(name in FOLDER_DEFAULT_SUBDIRS for name in comfy_glue.PACK_MODEL_FOLDERS)


def test_listing_a_pack_folder_registers_every_pack_folder(comfy_folders, tmp_path):
    (tmp_path / "models" / "sams" / "sam_vit_b_01ec64.pth").write_bytes(b"0")
    (tmp_path / "models" / "sams" / "readme.txt").write_text("not a model")
    choices = SAMLoader.INPUT_TYPES()["required"]["sam_name"][0]
    assert choices == ["sam_vit_b_01ec64.pth"]  # weight files only
    for name in comfy_glue.PACK_MODEL_FOLDERS:
        paths, extensions = comfy_folders.folder_names_and_paths[name]
        assert paths == [str(tmp_path / "models" / FOLDER_DEFAULT_SUBDIRS[name])] and ".pth" in extensions


def test_an_extra_model_paths_entry_keeps_its_folders_and_gets_our_extensions(comfy_folders, tmp_path):
    shared = tmp_path / "shared_salient"
    shared.mkdir()
    (shared / "ckpt_base.pth").write_bytes(b"0")
    (shared / "notes.txt").write_text("x")
    # what ComfyUI makes of an extra_model_paths.yaml 'salient:' entry: the folder, every file
    comfy_folders.folder_names_and_paths[SALIENT_FOLDER] = ([str(shared)], set())
    comfy_folders.filename_list_cache[SALIENT_FOLDER] = (["ckpt_base.pth", "notes.txt"], {}, 0.0)
    assert LoadSalientModel.INPUT_TYPES()["required"]["checkpoint"][0] == ["ckpt_base.pth"]
    paths, _ = comfy_folders.folder_names_and_paths[SALIENT_FOLDER]
    assert paths == [str(shared), str(tmp_path / "models" / "salient")]
    assert SALIENT_FOLDER not in comfy_folders.filename_list_cache  # the stale "every file" list is dropped
    assert LoadSalientModel.resolve("ckpt_base.pth") == str(shared / "ckpt_base.pth")
    entry = comfy_folders.folder_names_and_paths[SALIENT_FOLDER]
    comfy_glue.register_pack_model_folders()  # again: nothing changes
    assert comfy_folders.folder_names_and_paths[SALIENT_FOLDER] is entry


def test_comfyui_core_folders_are_left_alone(comfy_folders):
    core = ([os.path.join(comfy_folders.models_dir, "controlnet")], {".safetensors"})
    comfy_folders.folder_names_and_paths["controlnet"] = core
    comfy_glue.list_model_files("controlnet")
    assert comfy_folders.folder_names_and_paths["controlnet"] is core
