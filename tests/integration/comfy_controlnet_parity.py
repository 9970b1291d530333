"""Run INSIDE a ComfyUI Python (COMFYUI_PYTHON, with COMFYUI_PATH on sys.path): load the tiny parity ControlNet
(tests/sb_testkit/controlnet_parity.py) through the pack's loader and ComfyUI's own ControlNet loading, run the
control model on the parity inputs, and compare with diffusers' ControlNetModel on the same weights.

    python comfy_controlnet_parity.py <comfyui_path> <work_dir> [--write-golden]
    python comfy_controlnet_parity.py <comfyui_path> <work_dir> --bases [--write-golden]

Prints one JSON line: max abs difference per residual, the weights fingerprint, and the ComfyUI class/dtype.
With --write-golden it also writes tests/data/controlnet/parity_tiny.npz (the ComfyUI residuals pinned for CI).

``--bases`` does the same for the other inpainting bases at full width (ComfyUI takes the head layout from the
family it detects): an SD1.5 ControlNet (detected SD15: 8 heads) and an SDXL-family one at Segmind-Vega's depth
(detected Segmind_Vega; SDXL's added conditioning ``y`` built as ComfyUI's SDXL model builds it), plus the key
names/shapes of full-size SD1.5 and SDXL ControlNets (meta tensors) against ComfyUI's, pinned for CI with
--write-golden. Needs ~6 GiB: run it under ``flock /tmp/heavy.lock``.
"""
from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)


def sd2_key_check(write: bool) -> dict:
    """Full-size SD2 ControlNet (meta tensors): our converted keys/shapes vs the keys/shapes of the ComfyUI model
    ComfyUI builds after detecting the converted dict; optionally pin ComfyUI's list for CI."""
    import torch
    import comfy.cldm.cldm
    import comfy.model_detection
    import comfy.ops
    from diffusers import ControlNetModel

    from salient_background.models.networks.comfy_keys import convert_diffusers_to_comfy
    from salient_background.models.networks.controlnet_checkpoint import SD2_SALIENT_CONTROLNET_CONFIG
    from sb_testkit import controlnet_parity as cp

    cfg = {k: v for k, v in SD2_SALIENT_CONTROLNET_CONFIG.items() if not k.startswith("_")}
    with torch.device("meta"):
        diffusers_model = ControlNetModel(**cfg)
    ours = convert_diffusers_to_comfy(diffusers_model.state_dict())
    model_config = comfy.model_detection.model_config_from_unet(ours, "", True)
    unet_config = dict(model_config.unet_config)
    unet_config.pop("out_channels")
    unet_config.update(hint_channels=3, operations=comfy.ops.disable_weight_init, device="meta", dtype=torch.float32)
    comfy_model = comfy.cldm.cldm.ControlNet(**unet_config)
    comfy_shapes = {k: list(v.shape) for k, v in comfy_model.state_dict().items()}
    our_shapes = {k: list(v.shape) for k, v in ours.items()}
    if write:
        with open(cp.COMFY_KEYS_PATH, "w") as fh:
            json.dump({"source": "ComfyUI cldm.ControlNet built from the detected SD2 config (tests/integration/"
                                 "comfy_controlnet_parity.py --write-golden)",
                       "detected_as": type(model_config).__name__, "keys": dict(sorted(comfy_shapes.items()))},
                      fh, indent=0)
    return {"sd2_detected_as": type(model_config).__name__, "sd2_keys": len(comfy_shapes),
            "sd2_keys_and_shapes_equal": comfy_shapes == our_shapes,
            "sd2_in_channels": unet_config.get("in_channels"), "sd2_context_dim": unet_config.get("context_dim")}


def base_key_check(base: str, write: bool, config=None) -> dict:
    """Full-size ControlNet of ``base`` (meta tensors): our converted keys/shapes vs those of the cldm.ControlNet
    ComfyUI builds for the family it detects from them; optionally pin ComfyUI's list for CI."""
    import torch
    import comfy.cldm.cldm
    import comfy.model_detection
    import comfy.ops
    from diffusers import ControlNetModel

    from salient_background.models.networks.comfy_keys import convert_diffusers_to_comfy
    from sb_testkit import controlnet_parity as cp

    with torch.device("meta"):
        diffusers_model = ControlNetModel(**(config or cp.FULL_SIZE_CONFIGS[base])())
    ours = convert_diffusers_to_comfy(diffusers_model.state_dict())
    model_config = comfy.model_detection.model_config_from_unet(ours, "", True)
    unet_config = dict(model_config.unet_config)
    unet_config.pop("out_channels")
    unet_config.update(hint_channels=3, operations=comfy.ops.disable_weight_init, device="meta", dtype=torch.float32)
    comfy_shapes = {k: list(v.shape) for k, v in comfy.cldm.cldm.ControlNet(**unet_config).state_dict().items()}
    our_shapes = {k: list(v.shape) for k, v in ours.items()}
    if write:
        with open(cp.comfy_keys_path(base), "w") as fh:
            json.dump({"source": f"ComfyUI cldm.ControlNet built from the config it detects for a full-size {base} "
                                 "ControlNet (tests/integration/comfy_controlnet_parity.py --bases --write-golden)",
                       "detected_as": type(model_config).__name__, "keys": dict(sorted(comfy_shapes.items()))},
                      fh, indent=0)
    return {"detected_as": type(model_config).__name__, "keys": len(comfy_shapes),
            "keys_and_shapes_equal": comfy_shapes == our_shapes, "context_dim": unet_config.get("context_dim"),
            "adm_in_channels": unet_config.get("adm_in_channels"), "num_heads": unet_config.get("num_heads"),
            "num_head_channels": unet_config.get("num_head_channels")}


def sdxl_y(inputs):
    """SDXL's ``y`` as comfy.model_base.SDXL.encode_adm builds it: pooled text embedding + Timestep(256) of each time id."""
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep

    embedder = Timestep(256)
    rows = [torch.cat([inputs["text_embeds"][i:i + 1], torch.flatten(torch.cat(
        [embedder(torch.tensor([float(v)])) for v in ids])).unsqueeze(0)], dim=1)
        for i, ids in enumerate(inputs["time_ids"])]
    return torch.cat(rows)


def base_parity(base: str, work: str) -> dict:
    """Our loader (base read from the weights) + ComfyUI's loading vs diffusers on the same random weights."""
    import numpy as np
    import torch

    from salient_background.nodes.controlnet_nodes import controlnet_base_of, load_salient_controlnet
    from sb_testkit import controlnet_parity as cp

    model = cp.build_base_controlnet(base)
    folder = os.path.join(work, base)
    model.save_pretrained(folder)
    inputs = cp.base_parity_inputs(base)
    ref = cp.diffusers_base_residuals(model, inputs)
    del model
    cnet = load_salient_controlnet(folder)
    cm = cnet.control_model.to(torch.float32)
    y = sdxl_y(inputs) if "text_embeds" in inputs else None
    out = cp.comfy_residuals_to_arrays(cm(x=inputs["x"], hint=inputs["hint"], timesteps=inputs["timesteps"],
                                          context=inputs["context"], y=y, c_concat=inputs["c_concat"]))
    rel = {k: float(np.abs(out[k] - ref[k]).max() / np.abs(ref[k]).max()) for k in ref}
    report = {"base": base, "read_base": controlnet_base_of(cnet).name, "max_rel_diff": max(rel.values()),
              "per_residual_rel": rel, "residuals": len(ref), "keys_equal": sorted(out) == sorted(ref),
              "ref_max_abs": min(float(np.abs(v).max()) for v in ref.values()),
              "dtype": str(next(cm.parameters()).dtype), "extra_conds": list(cnet.extra_conds),
              "class": type(cnet).__name__}
    if y is not None:  # y is used: another y gives other residuals
        other = cm(x=inputs["x"], hint=inputs["hint"], timesteps=inputs["timesteps"], context=inputs["context"],
                   y=torch.zeros_like(y), c_concat=inputs["c_concat"])
        report["y_effect"] = float((other["middle"][0] - torch.from_numpy(out["middle_0"])).abs().max())
    del cnet, cm
    return report


def bases_main(comfy_path: str, work: str, write: bool) -> None:
    from sb_testkit import controlnet_parity as cp

    report = {"parity": [base_parity(base, work) for base in cp.BASE_PARITY_CONFIGS],
              "key_checks": {base: base_key_check(base, write) for base in cp.FULL_SIZE_CONFIGS}}
    report["key_checks"]["sdxl-inpainting at Segmind-Vega depth"] = base_key_check(
        "sdxl-inpainting", False, config=cp.vega_controlnet_config)
    print(json.dumps(report))


def main() -> None:
    comfy_path, work = sys.argv[1], sys.argv[2]
    write = "--write-golden" in sys.argv
    sys.path.insert(0, comfy_path)
    sys.path.insert(0, TESTS)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import conftest  # noqa: F401  registers the pack as salient_background
    import numpy as np
    import torch

    from salient_background.nodes.controlnet_nodes import load_salient_controlnet
    from sb_testkit import controlnet_parity as cp
    from sb_testkit.diffusers_models import save_controlnet_diffusers

    torch.set_grad_enabled(False)
    if "--bases" in sys.argv:
        bases_main(comfy_path, work, write)
        return
    model = cp.build_parity_controlnet()
    folder = save_controlnet_diffusers(model, os.path.join(work, "parity_controlnet"))
    inputs = cp.parity_inputs()
    ref = cp.diffusers_residuals(model, inputs)

    cnet = load_salient_controlnet(folder, cross_attention_dim=cp.PARITY_CROSS_ATTENTION_DIM)
    cm = cnet.control_model
    cm.to(torch.float32)
    out = cm(x=inputs["x"], hint=inputs["hint"], timesteps=inputs["timesteps"], context=inputs["context"],
             y=None, c_concat=inputs["c_concat"])
    got = cp.comfy_residuals_to_arrays(out)
    diffs = {k: float(np.abs(got[k] - ref[k]).max()) for k in ref}
    scale = {k: float(np.abs(ref[k]).max()) for k in ref}
    report = {
        "max_abs_diff": max(diffs.values()), "per_residual": diffs, "ref_max_abs": scale,
        "keys_equal": sorted(got) == sorted(ref), "fingerprint": cp.weights_fingerprint(model.state_dict()),
        "class": type(cm).__name__, "mro": [c.__module__ + "." + c.__name__ for c in type(cm).__mro__[:3]],
        "dtype": str(next(cm.parameters()).dtype), "extra_conds": list(cnet.extra_conds),
    }
    if os.path.isfile(cp.GOLDEN_PATH) and not write:
        golden = np.load(cp.GOLDEN_PATH)
        report["golden_max_abs_diff"] = max(float(np.abs(golden[k] - got[k]).max()) for k in got)
        report["golden_fingerprint"] = float(golden["fingerprint"])
    report.update(sd2_key_check(write))
    if write:
        os.makedirs(os.path.dirname(cp.GOLDEN_PATH), exist_ok=True)
        np.savez_compressed(cp.GOLDEN_PATH, fingerprint=np.float64(report["fingerprint"]),
                            **{k: v.astype(np.float32) for k, v in got.items()})
        report["golden_written"] = cp.GOLDEN_PATH
    print(json.dumps(report))


if __name__ == "__main__":
    main()
