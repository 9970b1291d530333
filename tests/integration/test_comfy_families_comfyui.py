"""The base table's ComfyUI families against the real ComfyUI: for the ControlNet our trainer would create
(``ControlNetModel.from_unet``, weightless) on each model shape, ComfyUI's own model detection
(``comfy.model_detection``) and ControlNet class (``comfy.cldm.cldm.ControlNet``) must agree with our verdict
(``models/networks/comfy_constraints.py``, from ``COMFY_FAMILIES`` in ``models/bases.py``): the family it detects, and
that the network it builds has exactly our converted keys and shapes -- or no family, and our verdict refuses it.

Runs in a subprocess under ``COMFYUI_PYTHON`` with ComfyUI's folder as the working directory (no server needed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from sb_testkit.comfy_server import PACK_ROOT

COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "").strip()

# (name, base, transformer depth per level, mid block, extra UNet settings)
SHAPES = [
    ("SD15", "sd15-inpainting", None, "UNetMidBlock2DCrossAttn", {}),
    ("SD20", "sd2-inpainting", None, "UNetMidBlock2DCrossAttn", {}),
    ("SDXL", "sdxl-inpainting", None, "UNetMidBlock2DCrossAttn", {}),
    ("SSD1B", "sdxl-inpainting", [1, 2, 4], "UNetMidBlock2DCrossAttn", {}),
    ("Segmind_Vega", "sdxl-inpainting", [1, 1, 2], "UNetMidBlock2D", {}),
    ("KOALA_700M", "sdxl-inpainting", [1, 2, 5], "UNetMidBlock2DCrossAttn", {"layers_per_block": 1}),
    ("KOALA_1B", "sdxl-inpainting", [1, 2, 6], "UNetMidBlock2DCrossAttn", {"layers_per_block": 1}),
    (None, "sdxl-inpainting", [1, 2, 6], "UNetMidBlock2DCrossAttn", {}),  # no family: depths 0/2/6 on two resnets
]

SCRIPT = textwrap.dedent("""
    import importlib.util, json, os, sys
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import torch
    import comfy.cldm.cldm, comfy.model_detection, comfy.ops
    pack = sys.argv[1]
    spec = importlib.util.spec_from_file_location("salient_background", os.path.join(pack, "__init__.py"),
                                                  submodule_search_locations=[pack])
    module = importlib.util.module_from_spec(spec)
    sys.modules["salient_background"] = module
    spec.loader.exec_module(module)
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel, UNet2DConditionModel
    from salient_background.models.generation.base_configs import full_size_configs
    from salient_background.models.networks.comfy_constraints import comfy_buildable_problems, comfy_family
    from salient_background.models.networks.comfy_keys import convert_diffusers_to_comfy

    results = []
    for name, base, depths, mid, extra in json.loads(sys.argv[2]):
        config = full_size_configs(base)["unet"]
        config.update(mid_block_type=mid, **extra)
        if depths:
            config["transformer_layers_per_block"] = depths
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(config)
            controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3, load_weights_from_unet=False)
        state = {k: torch.empty(v.shape, device="meta") for k, v in controlnet.state_dict().items()}
        comfy_sd = convert_diffusers_to_comfy(state)
        prefix = "control_model." if any(k.startswith("control_model.") for k in comfy_sd) else ""
        detected = comfy.model_detection.model_config_from_unet_config(
            comfy.model_detection.detect_unet_config(comfy_sd, prefix), comfy_sd)
        same = None
        if detected is not None:
            settings = dict(detected.unet_config)
            settings.pop("out_channels", None)
            settings.update(operations=comfy.ops.disable_weight_init, device="meta", dtype=torch.float32,
                            hint_channels=comfy_sd[prefix + "input_hint_block.0.weight"].shape[1])
            built = comfy.cldm.cldm.ControlNet(**settings).state_dict()
            same = ({k: tuple(v.shape) for k, v in built.items()}
                    == {k[len(prefix):]: tuple(v.shape) for k, v in comfy_sd.items()})
        results.append({"comfy": type(detected).__name__ if detected is not None else None, "same": same,
                        "ours": comfy_family(dict(controlnet.config)),
                        "problems": comfy_buildable_problems(dict(controlnet.config))})
    print("RESULT " + json.dumps(results))
""")


def test_our_comfyui_families_are_the_ones_comfyui_detects_and_builds():
    python = os.environ.get("COMFYUI_PYTHON", "").strip() or sys.executable
    done = subprocess.run([python, "-c", SCRIPT, str(PACK_ROOT), json.dumps(SHAPES)], cwd=COMFYUI_PATH,
                          capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "OMP_NUM_THREADS": "1",
                               "PYTHONPATH": os.pathsep.join(filter(None, [COMFYUI_PATH, os.environ.get("PYTHONPATH")]))})
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    for (name, *_), result in zip(SHAPES, json.loads(line[len("RESULT "):])):
        assert result["comfy"] == result["ours"] == name, (name, result)
        if name is None:
            assert any("recognises no model family" in p for p in result["problems"])
        else:
            assert result["same"] is True and result["problems"] == [], (name, result)
