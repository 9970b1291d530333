"""extra_model_paths.yaml read with PyYAML the way ComfyUI reads it; a broken file is one clear error."""
from __future__ import annotations

import os

import pytest

from salient_background.models.model_files import model_paths
from salient_background.models.errors import UserFacingError


def _write(tmp_path, text: str, name: str = "extra_model_paths.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_yaml_features_comfyui_files_use(tmp_path):
    """Quoted values, '#' inside quotes, folded and literal blocks, anchors: all as PyYAML (ComfyUI) reads them."""
    path = _write(tmp_path, (
        "defaults: &defaults\n"
        "    base_path: '/data/models # not a comment'\n"
        "    is_default: yes\n"
        "first:\n"
        "    <<: *defaults\n"
        "    sams: \"sam one\"\n"
        "    salient: >-\n"
        "        salient\n"
        "second:\n"
        "    sams: |\n"
        "        /abs/a\n"
        "\n"
        "        /abs/b\n"
        "    custom_nodes: [ignored, list]\n"
    ))
    base = "/data/models # not a comment"
    assert model_paths.read_extra_model_paths(path) == [
        ("sams", os.path.join(base, "sam one"), True),
        ("salient", os.path.join(base, "salient"), True),
        ("sams", "/abs/a", False),
        ("sams", "/abs/b", False),
    ]


def test_an_empty_file_lists_nothing(tmp_path):
    assert model_paths.read_extra_model_paths(_write(tmp_path, "# nothing configured\n")) == []


@pytest.mark.parametrize("text, reason", [
    ("a111:\n    sams: [unclosed\n", "is not valid YAML"),
    ("- just\n- a list\n", "does not hold sections"),
])
def test_a_broken_file_is_one_clear_error(tmp_path, text, reason):
    with pytest.raises(UserFacingError, match=reason):
        model_paths.read_extra_model_paths(_write(tmp_path, text))


def test_a_file_that_is_not_text_is_one_clear_error(tmp_path):
    path = tmp_path / "extra_model_paths.yaml"
    path.write_bytes(b"a111:\n    sams: \xff\xfe\n")
    with pytest.raises(UserFacingError, match="is not valid YAML"):
        model_paths.read_extra_model_paths(str(path))
    with pytest.raises(UserFacingError, match="cannot read"):
        model_paths.read_extra_model_paths(str(tmp_path / "missing.yaml"))
