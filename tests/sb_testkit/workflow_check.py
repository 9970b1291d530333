"""Validate ComfyUI workflow files (UI and API format) against node schemas, without ComfyUI.

Schemas: ComfyUI 0.3.64's ``/object_info`` answer for the core nodes the workflows and tests use
(``tests/data/comfyui/object_info.json``, written by ``tests/data/comfyui/regenerate_object_info.py``) plus the
pack's own nodes, described from the code the way ComfyUI's server describes them (``pack_object_info``).

UI format conventions follow ComfyUI's frontend (comfyui-frontend-package 1.27): ``widgets_values`` holds one
value per widget input in input order (required, then optional). An INT input gets a "control after generate"
widget right after it when its options say ``control_after_generate: true``, or, when the option is absent,
when it is named ``seed`` or ``noise_seed`` (the frontend's legacy rule; ``false`` switches it off). A combo with
``control_after_generate: true`` gets the control widget and a filter-list widget. An ``image_upload`` combo is
followed by the upload widget's value ("image"). Frontend-only nodes (Note, MarkdownNote, Reroute,
PrimitiveNode) are not sent to the server: Reroutes are followed and PrimitiveNode values are written into the
inputs they feed.
"""
from __future__ import annotations

import json
import math
import os

FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
COMBO_CONTROL_VALUES = CONTROL_VALUES | {"increment-wrap"}
# INT inputs the frontend gives a control widget when the schema does not say control_after_generate
LEGACY_SEED_NAMES = ("seed", "noise_seed")
# ComfyUI 0.3.64's /object_info, trimmed to the core nodes used here (regenerate_object_info.py writes it)
CORE_OBJECT_INFO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "data", "comfyui", "object_info.json")
# Inputs whose choices come from the user's folders (any file name is accepted in a shared workflow): combos
# whose list is empty in the schema (a folder with no files), image uploads, and these names.
FILE_INPUTS = {"ckpt_name", "control_net_name", "vae_name", "lora_name", "unet_name", "clip_name", "image",
               "checkpoint", "controlnet", "sam_name"}


# ---------------------------------------------------------------------------------------------- schemas
def pack_object_info() -> dict:
    """The pack's nodes described like ComfyUI's ``/object_info`` (server.node_info)."""
    from salient_background import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    info = {}
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        inputs = cls.INPUT_TYPES()
        outputs = list(cls.RETURN_TYPES)
        info[node_id] = {
            "input": inputs,
            "input_order": {section: list(spec) for section, spec in inputs.items()},
            "output": outputs,
            "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(outputs))),
            "output_name": list(getattr(cls, "RETURN_NAMES", outputs)),
            "name": node_id,
            "display_name": NODE_DISPLAY_NAME_MAPPINGS.get(node_id, node_id),
            "category": cls.CATEGORY,
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        }
    return info


def load_schemas(object_info_path: str = CORE_OBJECT_INFO) -> dict:
    with open(object_info_path) as handle:
        schemas = json.load(handle)
    schemas.update(json.loads(json.dumps(pack_object_info(), default=str)))
    return schemas


def _input_specs(schema: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, required) for every input in the order the frontend lays them out."""
    order = schema.get("input_order") or {k: list(v) for k, v in schema["input"].items()}
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = schema["input"].get(section, {}).get(name)
            if spec is not None:
                out.append((name, list(spec) if isinstance(spec, (list, tuple)) else [spec], section == "required"))
    return out


def _kind(spec: list) -> str:
    head = spec[0]
    if isinstance(head, list):
        return "COMBO"
    return head


def _options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec: list) -> bool:
    options = _options(spec)
    if options.get("forceInput"):
        return False
    return _kind(spec) in WIDGET_TYPES


def has_control_widget(name: str, spec: list) -> bool:
    """Whether the frontend adds a "control after generate" widget after this input (its useIntWidget and
    addComboWidget): INT inputs by the explicit option, else by the legacy seed/noise_seed name rule; combos only
    by the explicit option."""
    options = _options(spec)
    if _kind(spec) == "INT":
        explicit = options.get("control_after_generate")
        return bool(explicit) if explicit is not None else name in LEGACY_SEED_NAMES
    return _kind(spec) == "COMBO" and bool(options.get("control_after_generate"))


def widget_layout(schema: dict) -> list[tuple[str, str]]:
    """The widgets_values layout: a list of (input name, role), role one of "value", "control", "filter" (a
    controlled combo's filter list) or "upload"."""
    layout = []
    for name, spec, _ in _input_specs(schema):
        if not is_widget(spec):
            continue
        layout.append((name, "value"))
        if has_control_widget(name, spec):
            layout.append((name, "control"))
            if _kind(spec) == "COMBO":
                layout.append((name, "filter"))
        if _options(spec).get("image_upload"):
            layout.append((name, "upload"))
    return layout


def check_widget_value(node_label: str, name: str, spec: list, value) -> list[str]:
    kind = _kind(spec)
    options = _options(spec)
    where = f"{node_label} input '{name}'"
    if kind == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            return [f"{where}: {value!r} is not an integer"]
    elif kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return [f"{where}: {value!r} is not a number"]
    elif kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: {value!r} is not true/false"]
    elif kind == "STRING":
        return [] if isinstance(value, str) else [f"{where}: {value!r} is not a string"]
    elif kind == "COMBO":
        choices = spec[0]
        file_choice = options.get("image_upload") or not choices or name in FILE_INPUTS
        if file_choice:
            return [] if isinstance(value, str) and value else [f"{where}: {value!r} is not a file name"]
        return [] if value in choices else [f"{where}: {value!r} is not one of {choices}"]
    if kind in ("INT", "FLOAT"):
        low, high = options.get("min"), options.get("max")
        if low is not None and value < low:
            return [f"{where}: {value} is below the minimum {low}"]
        if high is not None and value > high:
            return [f"{where}: {value} is above the maximum {high}"]
    return []


def _types_match(produced: str, expected: str) -> bool:
    if "*" in (produced, expected):
        return True
    expected_set = set(str(expected).split(","))
    return bool(set(str(produced).split(",")) & expected_set)


# ---------------------------------------------------------------------------------------------- UI format
def check_ui_workflow(workflow: dict, schemas: dict) -> list[str]:
    """Every problem found in a UI-format workflow (empty list = valid)."""
    errors: list[str] = []
    nodes = {node["id"]: node for node in workflow.get("nodes", [])}
    links = {link[0]: link for link in workflow.get("links", [])}
    if not nodes:
        return ["the workflow has no nodes"]
    for node in nodes.values():
        node_type = node.get("type")
        label = f"node {node['id']} ({node_type})"
        if node_type in FRONTEND_ONLY:
            continue
        schema = schemas.get(node_type)
        if schema is None:
            errors.append(f"{label}: unknown node type")
            continue
        if node.get("mode", 0) not in (0,):
            errors.append(f"{label}: muted or bypassed nodes do not belong in a shared workflow")
        specs = {name: (spec, required) for name, spec, required in _input_specs(schema)}
        # widget values
        values = list(node.get("widgets_values") or [])
        layout = widget_layout(schema)
        if len(values) != len(layout):
            errors.append(f"{label}: {len(values)} widget values for {len(layout)} widget slots {[n for n, _ in layout]}")
        else:
            for (name, role), value in zip(layout, values):
                if role == "value":
                    errors += check_widget_value(label, name, specs[name][0], value)
                elif role == "control":
                    allowed = COMBO_CONTROL_VALUES if _kind(specs[name][0]) == "COMBO" else CONTROL_VALUES
                    if value not in allowed:
                        errors.append(f"{label} input '{name}': control value {value!r} is not one of {sorted(allowed)}")
                elif role == "filter" and not isinstance(value, str):
                    errors.append(f"{label} input '{name}': filter list {value!r} is not a string")
        # sockets
        linked = {}
        for slot, socket in enumerate(node.get("inputs", [])):
            name = socket.get("name")
            if name not in specs:
                errors.append(f"{label}: input socket '{name}' does not exist")
                continue
            spec = specs[name][0]
            if is_widget(spec) and "widget" not in socket:
                errors.append(f"{label}: widget '{name}' shown as a socket without a 'widget' entry")
            link_id = socket.get("link")
            if link_id is None:
                continue
            link = links.get(link_id)
            if link is None:
                errors.append(f"{label}: input '{name}' refers to missing link {link_id}")
                continue
            if link[3] != node["id"] or link[4] != slot:
                errors.append(f"{label}: link {link_id} does not end at input '{name}' (slot {slot})")
            linked[name] = link
            expected = _kind(spec) if not isinstance(spec[0], list) else "COMBO"
            origin = nodes.get(link[1])
            if origin is None:
                errors.append(f"{label}: link {link_id} comes from missing node {link[1]}")
                continue
            produced = _output_type(origin, link[2], nodes, links, schemas)
            if produced is None:
                errors.append(f"{label}: link {link_id} comes from a missing output {link[2]} of node {link[1]}")
            elif not _types_match(produced, expected) and not (expected == "COMBO" and origin.get("type") == "PrimitiveNode"):
                errors.append(f"{label}: input '{name}' expects {expected} but link {link_id} carries {produced}")
        for name, (spec, required) in specs.items():
            if required and not is_widget(spec) and name not in linked:
                errors.append(f"{label}: required input '{name}' ({_kind(spec)}) is not connected")
    for link in links.values():
        if link[1] not in nodes or link[3] not in nodes:
            errors.append(f"link {link[0]} joins missing nodes {link[1]} -> {link[3]}")
    return errors


def _output_type(node: dict, slot: int, nodes: dict, links: dict, schemas: dict):
    if node.get("type") == "Reroute":
        source = _reroute_source(node, nodes, links)
        return None if source is None else _output_type(nodes[source[0]], source[1], nodes, links, schemas)
    if node.get("type") == "PrimitiveNode":
        outputs = node.get("outputs") or []
        return outputs[slot].get("type") if slot < len(outputs) else None
    schema = schemas.get(node.get("type"))
    if schema is None or slot >= len(schema["output"]):
        return None
    produced = schema["output"][slot]
    return "COMBO" if isinstance(produced, list) else produced


def _reroute_source(node: dict, nodes: dict, links: dict):
    socket = (node.get("inputs") or [{}])[0]
    link = links.get(socket.get("link"))
    if link is None:
        return None
    origin = nodes.get(link[1])
    if origin is not None and origin.get("type") == "Reroute":
        return _reroute_source(origin, nodes, links)
    return link[1], link[2]


def ui_to_api(workflow: dict, schemas: dict) -> dict:
    """The API-format prompt the frontend would send for a UI-format workflow."""
    nodes = {node["id"]: node for node in workflow.get("nodes", [])}
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in nodes.values():
        if node.get("type") in FRONTEND_ONLY or node.get("mode", 0) != 0:
            continue
        schema = schemas[node["type"]]
        inputs = {}
        values = list(node.get("widgets_values") or [])
        for (name, role), value in zip(widget_layout(schema), values):
            if role == "value":
                inputs[name] = value
        for socket in node.get("inputs", []):
            link = links.get(socket.get("link"))
            if link is None:
                continue
            origin = nodes[link[1]]
            source = (link[1], link[2])
            if origin.get("type") == "Reroute":
                source = _reroute_source(origin, nodes, links)
                origin = nodes[source[0]]
            if origin.get("type") == "PrimitiveNode":
                inputs[socket["name"]] = (origin.get("widgets_values") or [None])[0]
            else:
                inputs[socket["name"]] = [str(source[0]), source[1]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


# ---------------------------------------------------------------------------------------------- API format
def check_api_prompt(prompt: dict, schemas: dict) -> list[str]:
    errors: list[str] = []
    for node_id, node in prompt.items():
        class_type = node.get("class_type")
        label = f"node {node_id} ({class_type})"
        schema = schemas.get(class_type)
        if schema is None:
            errors.append(f"{label}: unknown node type")
            continue
        inputs = node.get("inputs", {})
        specs = {name: (spec, required) for name, spec, required in _input_specs(schema)}
        for name in inputs:
            if name not in specs:
                errors.append(f"{label}: unknown input '{name}'")
        for name, (spec, required) in specs.items():
            if name not in inputs:
                if required:
                    errors.append(f"{label}: required input '{name}' is missing")
                continue
            value = inputs[name]
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int):
                origin = prompt.get(value[0])
                if origin is None:
                    errors.append(f"{label}: input '{name}' links to missing node {value[0]}")
                    continue
                origin_schema = schemas.get(origin.get("class_type"))
                if origin_schema is None or value[1] >= len(origin_schema["output"]):
                    errors.append(f"{label}: input '{name}' links to a missing output {value}")
                    continue
                produced = origin_schema["output"][value[1]]
                produced = "COMBO" if isinstance(produced, list) else produced
                if not _types_match(produced, _kind(spec)):
                    errors.append(f"{label}: input '{name}' expects {_kind(spec)} but {value} gives {produced}")
            elif not is_widget(spec):
                errors.append(f"{label}: input '{name}' ({_kind(spec)}) must be a link, got {value!r}")
            else:
                errors += check_widget_value(label, name, spec, value)
    return errors


def workflow_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".json"))
