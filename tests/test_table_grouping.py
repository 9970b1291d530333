"""Grouping the comparison's inputs by dataset and category (models/scoring/comparison/grouping.py): a category file
matched by photo path or by id, COCO annotations mapped to the largest instance's supercategory, and the table's
blocks with their known counts."""
from __future__ import annotations

import json

import pytest

from salient_background.models.errors import InputError
from salient_background.models.scoring.comparison import grouping


def _coco(path):
    data = {
        "images": [{"id": 1, "file_name": "000000000001.jpg"}, {"id": 2, "file_name": "000000000002.jpg"},
                   {"id": 3, "file_name": "000000000003.jpg"}],
        "categories": [{"id": 18, "name": "dog", "supercategory": "animal"},
                       {"id": 3, "name": "car", "supercategory": "vehicle"},
                       {"id": 47, "name": "cup", "supercategory": "kitchen"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 18, "area": 900.0},  # a dog and a larger car: vehicle
            {"id": 11, "image_id": 1, "category_id": 3, "area": 1500.5},
            {"id": 12, "image_id": 2, "category_id": 47, "area": 40.0},  # one cup: kitchen
            {"id": 13, "image_id": 2, "category_id": 18, "area": 39.0},
        ],  # image 3 has no instance: no category
    }
    path.write_text(json.dumps(data))
    return str(path)


def test_coco_category_is_the_largest_instances_supercategory(tmp_path):
    mapping = grouping.coco_supercategories(_coco(tmp_path / "instances_val2017.json"))
    assert mapping == {"000000000001.jpg": "vehicle", "000000000002.jpg": "kitchen"}
    rows = [{"id": f"i{k}", "source": f"/data/coco/val2017/00000000000{k}.jpg"} for k in (1, 2, 3)]
    groups = grouping.assign_groups(rows, coco_annotations=str(tmp_path / "instances_val2017.json"))
    assert groups == {"i1": ("all", "vehicle"), "i2": ("all", "kitchen"), "i3": ("all", None)}


def test_category_file_by_photo_path_and_by_id_and_the_blocks_counts(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (tmp_path / "inputs.csv").write_text(
        "image,prompt,category,dataset\n"
        "photos/a.png,x,animal,set1\nphotos/b.png,x,animal,set1\nphotos/c.png,x,vehicle,set1\n"
        "photos/d.png,x,animal,set2\nphotos/e.png,x,,set2\n")
    (tmp_path / "by_id.json").write_text(json.dumps([{"id": "f", "category": "vehicle"}]))
    rows = [{"id": n, "source": str(photos / f"{n}.png")} for n in "abcde"] + [{"id": "f", "source": "/elsewhere/f.png"}]
    groups = grouping.assign_groups(rows, str(tmp_path / "inputs.csv"))
    assert groups["a"] == ("set1", "animal") and groups["e"] == ("set2", None) and groups["f"] == ("all", None)
    groups.update(grouping.assign_groups(rows[-1:], str(tmp_path / "by_id.json")))
    blocks = grouping.blocks(groups)
    assert [(key, len(ids)) for key, ids in blocks.items()] == [
        (("all", "all"), 1), (("all", "vehicle"), 1),
        (("set1", "all"), 3), (("set1", "animal"), 2), (("set1", "vehicle"), 1),
        (("set2", "all"), 2), (("set2", "animal"), 1)]
    assert blocks[("set1", "animal")] == ["a", "b"]
    # the run's own manifest row wins over the file
    mine = grouping.assign_groups([{"id": "a", "source": str(photos / "a.png"), "category": "toy"}], str(tmp_path / "inputs.csv"))
    assert mine == {"a": ("set1", "toy")}


def test_bad_category_sources_are_clear_errors(tmp_path):
    (tmp_path / "x.csv").write_text("image,prompt\na.png,x\n")
    with pytest.raises(InputError, match="neither a 'category' nor a 'dataset' column"):
        grouping.assign_groups([{"id": "a", "source": "a.png"}], str(tmp_path / "x.csv"))
    (tmp_path / "bad.json").write_text("{\"images\": []}")
    with pytest.raises(InputError, match="not a COCO instances file"):
        grouping.coco_supercategories(str(tmp_path / "bad.json"))
    with pytest.raises(InputError, match="not found"):
        grouping.coco_supercategories(str(tmp_path / "missing.json"))
