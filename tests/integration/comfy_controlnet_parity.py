"""Run INSIDE a ComfyUI Python (COMFYUI_PYTHON, with COMFYUI_PATH on sys.path): load the tiny parity ControlNet
(tests/sb_testkit/controlnet_parity.py) through the pack's loader and ComfyUI's own ControlNet loading, run the
control model on the parity inputs, and compare with diffusers' ControlNetModel on the same weights.

    python comfy_controlnet_parity.py <comfyui_path> <work_dir> [--write-golden]

Prints one JSON line: max abs difference per residual, the weights fingerprint, and the ComfyUI class/dtype.
With --write-golden it also writes tests/data/controlnet/parity_tiny.npz (the ComfyUI residuals pinned for CI).
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
