"""What loads a file cannot run code from it or write where it should not (docs/security.md): pickles only with
``weights_only=True``, no unsafe loader anywhere in the pack, the nodes' file lookups and example inputs."""
from __future__ import annotations

import ast
import os
import sys
import types

import pytest
import torch

from salient_background.models.errors import CheckpointError
from salient_background.models.model_files.model_registry import MODEL_FILES
from salient_background.models.networks.checkpoint_io import load_state_dict
from sb_testkit.hostile_inputs import tree_listing

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_FOLDERS = ("models", "nodes", "commands", "training")


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: what a booby-trapped weight file would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _booby_trapped(tmp_path, name: str = "model.pth") -> tuple[str, str]:
    marker = str(tmp_path / "code_ran")
    path = str(tmp_path / name)
    torch.save({"weight": torch.zeros(2), "trap": _Payload(marker)}, path)
    return path, marker


def test_a_pickle_carrying_code_is_refused_and_the_code_never_runs(tmp_path):
    path, marker = _booby_trapped(tmp_path)
    with pytest.raises(CheckpointError, match="could not read"):
        load_state_dict(path, what="test checkpoint")
    assert not os.path.exists(marker)


def test_the_fid_inception_file_is_unpickled_only_with_weights_only(tmp_path, monkeypatch):
    """torch-fidelity unpickles its weights with weights_only=False: it must never be given the user's file, only
    the tensors our weights_only=True read gave (re-serialised in memory)."""
    pytest.importorskip("torch_fidelity")
    import torchmetrics.image.fid as tm_fid

    from salient_background.models.scoring import metrics
    from salient_background.models.scoring.metrics import inception

    path = str(tmp_path / "inception.pth")
    state = {key: torch.full((2,), float(k)) for k, key in enumerate(inception._LAYOUT_KEYS)}
    torch.save(state, path)
    given = []

    class Recorder(torch.nn.Module):  # stands in for the network: records what torch-fidelity would unpickle
        def __init__(self, *args, feature_extractor_weights_path=None, **kwargs):
            super().__init__()
            given.append(feature_extractor_weights_path)

    monkeypatch.setattr(tm_fid, "NoTrainInceptionV3", Recorder)
    metrics.load_inception(path)
    assert len(given) == 1 and not isinstance(given[0], (str, os.PathLike))
    handed = torch.load(given[0], weights_only=True)  # plain tensors: loads under the strict unpickler
    assert handed.keys() == state.keys() and all(torch.equal(handed[k], state[k]) for k in state)


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            yield name, {kw.arg: ast.unparse(kw.value) for kw in node.keywords if kw.arg}, node


def test_no_unsafe_loader_or_shell_anywhere_in_the_pack():
    """A static guard: every torch.load says weights_only=True; no pickle/marshal/yaml.load/eval/exec, no
    np.load(allow_pickle=True), no shell=True (code that runs with the pack: models, nodes, commands, training)."""
    problems = []
    for folder in PACK_FOLDERS:
        for dirpath, _, names in os.walk(os.path.join(REPO_ROOT, folder)):
            for name in (n for n in names if n.endswith(".py")):
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8") as fh:
                    tree = ast.parse(fh.read(), path)
                where = os.path.relpath(path, REPO_ROOT)
                for node in ast.walk(tree):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        modules = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                        if any(m.split(".")[0] in ("pickle", "marshal", "dill", "cloudpickle") for m in modules):
                            problems.append(f"{where}:{node.lineno} imports a pickle module")
                for func, kwargs, node in _calls(tree):
                    line = f"{where}:{node.lineno} {func}"
                    if func.endswith("torch.load") and kwargs.get("weights_only") != "True":
                        problems.append(f"{line} without weights_only=True")
                    if func in ("eval", "exec", "yaml.load", "yaml.unsafe_load", "os.system", "os.popen"):
                        problems.append(line)
                    if kwargs.get("allow_pickle") == "True" or kwargs.get("shell") == "True":
                        problems.append(f"{line} with allow_pickle/shell=True")
                    if kwargs.get("trust_remote_code") == "True":
                        problems.append(f"{line} with trust_remote_code=True")
    assert not problems, "\n".join(problems)


def test_registry_file_names_stay_inside_their_folder():
    """The downloader writes <models>/<folder>/<filename>: a name from the table may hold sub-folders, never '..'
    nor an absolute path."""
    for entry in MODEL_FILES:
        parts = entry.filename.split("/")
        assert not os.path.isabs(entry.filename) and ".." not in parts and "" not in parts, entry.filename
        assert "\\" not in entry.filename and ".." not in entry.folder.split("/"), entry.key


@pytest.fixture
def comfy_like_folders(tmp_path, monkeypatch):
    """A ``folder_paths`` that looks names up as ComfyUI's does (a name is taken relative to the model folder,
    '..' cannot climb above it), with an input folder."""
    models, inputs = tmp_path / "comfy" / "models" / "sams", tmp_path / "comfy" / "input"
    models.mkdir(parents=True)
    inputs.mkdir(parents=True)
    fake = types.ModuleType("folder_paths")
    fake.models_dir = str(models.parent)
    fake.folder_names_and_paths = {}
    fake.get_folder_paths = lambda folder: [str(models)] if folder == "sams" else []
    fake.get_input_directory = lambda: str(inputs)

    def get_full_path(folder, name):
        name = os.path.relpath(os.path.join(os.sep, name), os.sep)  # ComfyUI's own clamp of '..'
        for base in fake.get_folder_paths(folder):
            if os.path.isfile(os.path.join(base, name)):
                return os.path.join(base, name)
        return None

    fake.get_full_path = get_full_path
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    return models, inputs


def test_model_names_climbing_out_of_the_model_folder(comfy_like_folders, tmp_path, monkeypatch):
    """A name with '..' does not climb out through the folder lookup; a name that is itself a path is READ (the
    pack's documented choice), and a pickle read that way runs no code; nothing is written."""
    from salient_background.nodes import comfy_glue

    models, _ = comfy_like_folders
    path, marker = _booby_trapped(tmp_path, "outside.pth")
    monkeypatch.chdir(models)
    monkeypatch.delenv("SALIENT_BG_AUTO_DOWNLOAD", raising=False)
    before = tree_listing(tmp_path)
    assert comfy_glue._find_in_folder("sams", "../../../outside.pth") is None
    for name in ("../../../outside.pth", path):
        found = comfy_glue.resolve_model_file("sams", name, where_to_get="")
        assert os.path.samefile(found, path)
        with pytest.raises(CheckpointError):
            load_state_dict(found)
    with pytest.raises(CheckpointError, match="not found"):
        comfy_glue.resolve_model_file("sams", "../../nothing_there.pth", where_to_get="")
    assert not os.path.exists(marker) and tree_listing(tmp_path) == before


def test_example_inputs_never_write_through_a_planted_symlink(comfy_like_folders, tmp_path):
    from salient_background.nodes.example_inputs import EXAMPLE_INPUTS_DIR, install_example_inputs

    _, inputs = comfy_like_folders
    names = sorted(os.listdir(EXAMPLE_INPUTS_DIR))
    assert names
    victim = tmp_path / "victim.png"
    for name in names:  # dangling links: following one would create the victim
        os.symlink(victim, inputs / name)
    assert install_example_inputs() == []
    assert not victim.exists() and all(os.path.islink(inputs / n) for n in names)


@pytest.mark.parametrize("name", ["", "/", "..", "../", "a\x00b.pth", "L" * 300 + ".pth", "caf\udce9.pth", "~/x.pth"])
def test_odd_model_names_are_a_clear_missing_file_error(comfy_like_folders, monkeypatch, name):
    """What a hand-edited or hostile workflow may send as a model name: a one-line 'not found', never another
    exception (the node's VALIDATE_INPUTS shows it before anything runs)."""
    from salient_background.nodes import comfy_glue

    models, _ = comfy_like_folders
    monkeypatch.chdir(models)
    monkeypatch.delenv("SALIENT_BG_AUTO_DOWNLOAD", raising=False)
    with pytest.raises(CheckpointError, match="not found"):
        comfy_glue.resolve_model_file("sams", name, where_to_get="")
    message = comfy_glue.validate_model_choice(lambda: comfy_glue.resolve_model_file("sams", name, where_to_get=""))
    assert isinstance(message, str) and "not found" in message
