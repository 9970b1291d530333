"""The pack copies the shipped workflows' example inputs into ComfyUI's input folder when it loads: only files that
are absent, never over a user's file, and never failing the pack's import. ComfyUI's ``folder_paths`` is faked."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import types


from salient_background.nodes import example_inputs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO_ROOT, "workflows", "inputs")


def fake_folder_paths(monkeypatch, input_dir):
    fake = types.ModuleType("folder_paths")
    fake.get_input_directory = lambda: str(input_dir)
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    return fake


def make_source(tmp_path, files: dict[str, bytes]):
    source = tmp_path / "examples"
    source.mkdir()
    for name, data in files.items():
        (source / name).write_bytes(data)
    return source


def test_absent_inputs_are_copied_byte_for_byte(tmp_path, monkeypatch):
    source = make_source(tmp_path, {"a.png": b"\x89PNG one", "b.png": b"\x89PNG two"})
    input_dir = tmp_path / "input"  # not created yet: ComfyUI creates it lazily too
    fake_folder_paths(monkeypatch, input_dir)
    assert example_inputs.install_example_inputs(str(source)) == ["a.png", "b.png"]
    assert (input_dir / "a.png").read_bytes() == b"\x89PNG one"
    assert (input_dir / "b.png").read_bytes() == b"\x89PNG two"
    assert example_inputs.install_example_inputs(str(source)) == []  # second load: nothing to do


def test_a_users_file_of_the_same_name_is_never_replaced(tmp_path, monkeypatch):
    source = make_source(tmp_path, {"example_product.png": b"ours", "other.png": b"ours too"})
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    (input_dir / "example_product.png").write_bytes(b"the user's own photo")
    fake_folder_paths(monkeypatch, input_dir)
    assert example_inputs.install_example_inputs(str(source)) == ["other.png"]
    assert (input_dir / "example_product.png").read_bytes() == b"the user's own photo"
    assert (input_dir / "other.png").read_bytes() == b"ours too"


def test_errors_are_logged_and_never_raised(tmp_path, monkeypatch, caplog):
    source = make_source(tmp_path, {"a.png": b"a", "b.png": b"b"})
    caplog.set_level(logging.WARNING, logger=example_inputs.__name__)
    # the input folder cannot be made (a file is in the way)
    blocked = tmp_path / "blocked"
    blocked.write_text("not a folder")
    fake_folder_paths(monkeypatch, blocked / "input")
    assert example_inputs.install_example_inputs(str(source)) == []
    assert "example inputs not copied" in caplog.text
    # ComfyUI's folder_paths itself fails
    fake = fake_folder_paths(monkeypatch, tmp_path)
    fake.get_input_directory = lambda: (_ for _ in ()).throw(RuntimeError("no input folder configured"))
    assert example_inputs.install_example_inputs(str(source)) == []
    assert "no input folder configured" in caplog.text
    # one file fails half-way (disk full): logged, no half file left under its name, the next one still copied
    input_dir = tmp_path / "input"
    fake_folder_paths(monkeypatch, input_dir)
    real_copy = example_inputs.shutil.copyfileobj

    def copy_failing_for_a(src, dst):
        if src.name.endswith("a.png"):
            dst.write(b"half")
            raise OSError("No space left on device")
        return real_copy(src, dst)

    monkeypatch.setattr(example_inputs.shutil, "copyfileobj", copy_failing_for_a)
    assert example_inputs.install_example_inputs(str(source)) == ["b.png"]
    assert "a.png not copied" in caplog.text and "No space left" in caplog.text
    assert sorted(os.listdir(input_dir)) == ["b.png"]
    # a missing source folder
    assert example_inputs.install_example_inputs(str(tmp_path / "nowhere")) == []


def test_outside_comfyui_nothing_happens(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "folder_paths", None)  # import folder_paths -> ImportError
    assert example_inputs.install_example_inputs(str(make_source(tmp_path, {"a.png": b"a"}))) == []


def test_every_image_the_workflows_load_is_shipped():
    names = set()
    api_dir = os.path.join(REPO_ROOT, "workflows", "api")
    for file_name in os.listdir(api_dir):
        with open(os.path.join(api_dir, file_name)) as handle:
            names |= {n["inputs"]["image"] for n in json.load(handle).values() if n["class_type"] == "LoadImage"}
    assert names and names <= set(os.listdir(SHIPPED)), names - set(os.listdir(SHIPPED))
    import salient_background  # the pack copies from its own workflows/inputs (this clone's or the installed one)

    package_root = os.path.dirname(os.path.abspath(salient_background.__file__))
    assert example_inputs.EXAMPLE_INPUTS_DIR == os.path.join(package_root, "workflows", "inputs")


def test_loading_the_pack_copies_them(tmp_path):
    """The pack's import (what ComfyUI does at startup) copies the example inputs, with a folder_paths on sys.path."""
    fake_dir = tmp_path / "fake_comfy"
    fake_dir.mkdir()
    input_dir = tmp_path / "input"
    (fake_dir / "folder_paths.py").write_text(textwrap.dedent(f"""
        models_dir = {str(tmp_path / "models")!r}
        folder_names_and_paths = {{}}
        def get_input_directory():
            return {str(input_dir)!r}
    """))
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(fake_dir)!r})
        import salient_background
        print(sorted(salient_background.NODE_CLASS_MAPPINGS)[:1])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    for name in os.listdir(SHIPPED):
        with open(os.path.join(SHIPPED, name), "rb") as handle:
            assert (input_dir / name).read_bytes() == handle.read()
