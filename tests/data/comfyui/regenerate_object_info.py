"""Writes ``object_info.json`` beside this script: a running ComfyUI's ``/object_info`` answer trimmed to the core
node types the shipped workflows use (``workflows/api/*.json``) plus ``EXTRA_NODE_TYPES``. The workflow tests and
``workflows/build_workflows.py`` read it as ComfyUI's node schemas, so neither needs a ComfyUI.

    python main.py --cpu --listen 127.0.0.1 --port 8188        # in a ComfyUI checkout (0.3.64 for the file here)
    python tests/data/comfyui/regenerate_object_info.py --url http://127.0.0.1:8188
    python tests/data/comfyui/regenerate_object_info.py --source saved_object_info.json   # or from a saved answer

Trimming: only the wanted node types; the pack's own nodes (``SalientBG_*``) are left out (the checker describes
them from the code); the choices of file inputs (checkpoints, input images, ...) are emptied, since they list the
files of whichever machine answered. Keys are sorted, so a regeneration changes only what ComfyUI changed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
OUTPUT = os.path.join(HERE, "object_info.json")
API_WORKFLOWS = os.path.join(REPO, "workflows", "api")
PACK_PREFIX = "SalientBG_"
# core node types the tests use beyond those in the workflows (none today)
EXTRA_NODE_TYPES: tuple[str, ...] = ()

sys.path.insert(0, os.path.join(REPO, "tests"))
from sb_testkit.workflow_check import FILE_INPUTS  # noqa: E402


def wanted_node_types() -> set[str]:
    types = set(EXTRA_NODE_TYPES)
    for name in sorted(os.listdir(API_WORKFLOWS)):
        if name.endswith(".json"):
            with open(os.path.join(API_WORKFLOWS, name)) as handle:
                types.update(node["class_type"] for node in json.load(handle).values())
    return {t for t in types if not t.startswith(PACK_PREFIX)}


def trim(object_info: dict, node_types: set[str]) -> dict:
    missing = sorted(node_types - set(object_info))
    if missing:
        raise SystemExit(f"error: the /object_info answer has no {', '.join(missing)}")
    trimmed = {}
    for node_type in sorted(node_types):
        schema = json.loads(json.dumps(object_info[node_type]))
        for section in schema.get("input", {}).values():
            for name, spec in section.items():
                if name in FILE_INPUTS and isinstance(spec, list) and spec and isinstance(spec[0], list):
                    spec[0] = []
        trimmed[node_type] = schema
    return trimmed


def fetch(url: str) -> dict:
    address = url.rstrip("/") + "/object_info"
    try:
        with urllib.request.urlopen(address, timeout=120) as response:
            return json.loads(response.read())
    except (OSError, ValueError) as exc:  # URLError is an OSError
        raise SystemExit(f"error: no /object_info answer from {address} (is ComfyUI running there?): {exc}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--url", default="http://127.0.0.1:8188", help="a running ComfyUI (default: %(default)s)")
    source.add_argument("--source", help="a saved /object_info answer instead of a running ComfyUI")
    parser.add_argument("--output", default=OUTPUT)
    args = parser.parse_args(argv)
    if args.source:
        with open(args.source) as handle:
            answer = json.load(handle)
    else:
        answer = fetch(args.url)
    trimmed = trim(answer, wanted_node_types())
    tmp = args.output + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(trimmed, handle, indent=1, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, args.output)
    print(f"wrote {args.output}: {len(trimmed)} node types")
    return 0


if __name__ == "__main__":
    sys.exit(main())
