"""Training memory plan: what training the salient ControlNet needs on each base, without any weights.

    python benchmarks/training_memory_plan.py [--markdown]

How the numbers are made (they are estimates, for one GPU and one process):

* **Parameters** are exact: the UNet, the ControlNet ``from_unet`` of it, the VAE and the text encoder(s) are built
  from the released models' configs (``models/generation/base_configs.py``) on the ``meta`` device, which holds
  shapes and no data, and counted.
* **Fixed memory** follows from them: frozen networks at 4 bytes per parameter (fp32) or 2 (mixed precision; SDXL's
  VAE stays fp32 under fp16), the trained ControlNet at 4 (fp32 master weights) + 4 (gradients; about none with
  ``--optimizer-in-backward``, which frees each as it is used) + 8 (AdamW's two moments; 2 with 8-bit Adam), and
  under mixed precision 2 more (autocast's half-precision copies of its weights). The default caption cache frees
  the text encoders and ``--latent-cache`` the VAE (both when validation is off).
* **Activations** (what the backward pass needs kept) are counted by running one training forward -- ControlNet then
  UNet, as the trainer does -- on meta tensors at the base's native resolution, batch 1, summing every tensor
  autograd saves. Attention is counted as PyTorch's flash / memory-efficient kernels (what a GPU runs) keep it:
  queries, keys, values, output and one log-sum-exp per query, no sequence x sequence matrix. With gradient
  checkpointing, the largest single block's activations are added once (it is recomputed during the backward).
  Mixed precision is taken as half the fp32 activations.
* Not counted: allocator slack and the CUDA context (the batch columns set 1 GiB aside for them), the caption table,
  data loading.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass

import torch

GIB = 2 ** 30
BASES = ("sd15-inpainting", "sd2-inpainting", "sdxl-inpainting")
CAPACITIES = (24, 80)  # GiB: a 24 GB card (RTX 3090/4090, A5000) and an 80 GB one (A100/H100)
CUDA_CONTEXT_GIB = 1.0  # kept aside for the CUDA context and the allocator


def _import_pack():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, "tests"))
    import conftest  # noqa: F401  (registers the repository as ``salient_background`` when it is not installed)


@dataclass
class Counts:
    unet: int
    controlnet: int
    vae_encoder: int
    vae: int
    text_encoders: int


def _meta_models(base: str):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from salient_background.models.generation.base_configs import full_size_configs

    configs = full_size_configs(base)
    classes = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(configs["unet"])
        controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3, load_weights_from_unet=False,
                                               conditioning_embedding_out_channels=(16, 32, 96, 256))
        vae = AutoencoderKL.from_config(configs["vae"])
        encoders = [classes[name](CLIPTextConfig(**cfg)) for name, cfg in configs["text_encoders"]]
    return configs, unet, controlnet, vae, encoders


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(base: str) -> Counts:
    _, unet, controlnet, vae, encoders = _meta_models(base)
    encoder_side = _count(vae.encoder) + _count(vae.quant_conv) if vae.quant_conv is not None else _count(vae.encoder)
    return Counts(_count(unet), _count(controlnet), encoder_side, _count(vae), sum(_count(e) for e in encoders))


class _SavedTensorLedger:
    """Bytes autograd keeps for the backward, in total and per unit gradient checkpointing recomputes (a resnet or a
    transformer block, as diffusers checkpoints them)."""

    UNITS = ("ResnetBlock2D", "BasicTransformerBlock")

    def __init__(self):
        self.seen: dict[int, int] = {}
        self.per_unit: dict[str, int] = {}
        self.stack: list[str] = []

    def pack(self, tensor):
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in self.seen:
            self.seen[id(base)] = base.numel() * base.element_size()
            if self.stack:
                self.per_unit[self.stack[-1]] = self.per_unit.get(self.stack[-1], 0) + self.seen[id(base)]
        return tensor

    def watch(self, model, prefix: str) -> None:
        for name, module in model.named_modules():
            if type(module).__name__ in self.UNITS:
                key = f"{prefix}.{name}"
                module.register_forward_pre_hook(lambda m, a, key=key: self.stack.append(key))
                module.register_forward_hook(lambda m, a, o: self.stack.pop() and None)  # None: keep the output

    def total(self, exclude: set) -> int:
        return sum(size for key, size in self.seen.items() if key not in exclude)

    def largest_unit(self, prefixes: tuple) -> int:
        return max((v for k, v in self.per_unit.items() if k.startswith(prefixes)), default=0)


class _MemoryEfficientAttention(torch.autograd.Function):
    """Stands in for scaled-dot-product attention on meta tensors, keeping for the backward what PyTorch's flash /
    memory-efficient kernels keep: queries, keys, values, the output and one log-sum-exp per query (no
    sequence x sequence matrix)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - the plan runs forwards only
        raise NotImplementedError


@contextlib.contextmanager
def _efficient_attention():
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda q, k, v, *a, **kw: _MemoryEfficientAttention.apply(q, k, v)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _training_forward(base: str, checkpointing: str) -> tuple[_SavedTensorLedger, set]:
    """One training forward (ControlNet, then the UNet with its residuals) on meta tensors, batch 1, fp32."""
    from salient_background.models.bases import get_base

    configs, unet, controlnet, _, _ = _meta_models(base)
    px = get_base(base).resolution
    lat = px // 8
    ledger = _SavedTensorLedger()
    ledger.watch(controlnet, "controlnet")
    ledger.watch(unet, "unet")
    unet.requires_grad_(False)
    controlnet.train()
    unet.train()
    if checkpointing in ("controlnet", "all"):
        controlnet.enable_gradient_checkpointing()
    if checkpointing == "all":
        unet.enable_gradient_checkpointing()
    meta = dict(device="meta")
    x, t = torch.empty(1, 9, lat, lat, **meta), torch.tensor([500], **meta)
    ctx = torch.empty(1, 77, configs["unet"]["cross_attention_dim"], **meta)
    extra = {}
    if configs["unet"].get("addition_embed_type"):
        extra = {"added_cond_kwargs": {"text_embeds": torch.empty(1, 1280, **meta), "time_ids": torch.empty(1, 6, **meta)}}
    with _efficient_attention(), torch.autograd.graph.saved_tensors_hooks(ledger.pack, lambda tensor: tensor):
        down, mid = controlnet(x, t, encoder_hidden_states=ctx, controlnet_cond=torch.empty(1, 3, px, px, **meta),
                               return_dict=False, **extra)
        unet(x, t, encoder_hidden_states=ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid,
             return_dict=False, **extra)
    return ledger, {id(p) for p in list(controlnet.parameters()) + list(unet.parameters())}


def activation_bytes(base: str, checkpointing: str) -> tuple[int, int]:
    """(bytes kept for the backward, transient bytes of the largest recomputed unit) for batch 1, fp32."""
    ledger, parameters = _training_forward(base, checkpointing)
    kept = ledger.total(parameters)
    if checkpointing == "off":
        return kept, 0
    plain, _ = _training_forward(base, "off")  # what a recomputed unit allocates: its activations unchecked
    prefixes = ("controlnet",) if checkpointing == "controlnet" else ("controlnet", "unet")
    return kept, plain.largest_unit(prefixes)


@dataclass
class Row:
    base: str
    precision: str
    setup: str
    fixed: float  # GiB, independent of the batch
    per_sample: float  # GiB of activations per sample

    def total(self, batch: int = 1) -> float:
        return self.fixed + self.per_sample * batch

    def largest_batch(self, capacity_gib: float) -> str:
        room = capacity_gib - CUDA_CONTEXT_GIB - self.fixed
        return str(int(room // self.per_sample)) if room >= self.per_sample else "does not fit"


SETUPS = (  # name, gradient checkpointing, optimizer in backward, caches (caption + latent), bytes of Adam state
    ("plain", "off", False, False, 8),
    ("checkpointing", "all", False, False, 8),
    ("lean", "all", True, True, 8),
    ("lean + 8-bit Adam", "all", True, True, 2),
)


def plan(base: str) -> list[Row]:
    counts = parameter_counts(base)
    acts = {mode: activation_bytes(base, mode) for mode in ("off", "all")}
    rows = []
    for precision, frozen_bytes, act_scale in (("fp32", 4, 1.0), ("mixed (bf16/fp16)", 2, 0.5)):
        vae_bytes = 4 if (base == "sdxl-inpainting" and frozen_bytes == 2) else frozen_bytes  # fp16: SDXL's VAE in fp32
        for name, checkpointing, in_backward, caches, adam_bytes in SETUPS:
            frozen = counts.unet * frozen_bytes
            if not caches:
                frozen += counts.vae_encoder * vae_bytes + counts.text_encoders * frozen_bytes
            trained = counts.controlnet * (4 + (0 if in_backward else 4) + adam_bytes + (2 if frozen_bytes == 2 else 0))
            kept, transient = acts[checkpointing]
            fixed = (frozen + trained + transient * act_scale) / GIB
            rows.append(Row(base, precision, name, fixed, kept * act_scale / GIB))
    return rows


def _format(rows: list[Row], counts: dict, markdown: bool) -> str:
    lines = []
    for base, c in counts.items():
        lines.append(f"{base}: UNet {c.unet / 1e6:.1f} M, ControlNet {c.controlnet / 1e6:.1f} M, VAE {c.vae / 1e6:.1f} M "
                     f"(encoder {c.vae_encoder / 1e6:.1f} M), text encoder(s) {c.text_encoders / 1e6:.1f} M parameters")
    lines.append("")
    head = ["base", "precision", "setup", "batch 1 (GiB)", "+ per sample (GiB)"] + \
           [f"largest batch, {c} GB GPU" for c in CAPACITIES]
    body = [[r.base, r.precision, r.setup, f"{r.total(1):.1f}", f"{r.per_sample:.2f}"] +
            [r.largest_batch(c) for c in CAPACITIES] for r in rows]
    if markdown:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        lines += ["| " + " | ".join(row) + " |" for row in body]
    else:
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        for row in [head] + body:
            lines.append("  ".join(x.ljust(w) for x, w in zip(row, widths)))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    parser.add_argument("--bases", nargs="+", default=list(BASES))
    args = parser.parse_args(argv)
    _import_pack()
    import logging

    logging.getLogger("diffusers").setLevel(logging.ERROR)
    with contextlib.redirect_stderr(open(os.devnull, "w")):
        rows = [row for base in args.bases for row in plan(base)]
        counts = {base: parameter_counts(base) for base in args.bases}
    print(_format(rows, counts, args.markdown))
    print(f"\nlargest batch: with {CUDA_CONTEXT_GIB:g} GiB kept aside for the CUDA context; setups: plain = no switches; checkpointing = "
          "--gradient-checkpointing; lean = --gradient-checkpointing --optimizer-in-backward --latent-cache with the "
          "caption cache (validation off); 8-bit Adam = --use-8bit-adam (bitsandbytes, CUDA). Estimates: see this "
          "script's docstring.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
