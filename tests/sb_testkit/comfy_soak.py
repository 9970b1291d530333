"""A soak of a real ComfyUI server with the pack: a bounded, seeded stream of prompts over the HTTP API.

Shared by ``tests/integration/test_soak_comfyui.py`` (tens of prompts) and ``benchmarks/soak_comfyui.py`` (hundreds).
The stream mixes every shipped workflow (``workflows/api/*.json``, cost lowered and model names pointed at random
models: the generation workflows all at the SD1.5-inpainting single file and its salient ControlNet) over varied
photos, masks, seeds, strengths and batch sizes, with a share of prompts that must fail: a missing photo or model
file, a mask of the wrong size, a ControlNet of another base, a NaN strength, and interrupts (POST /interrupt) in the
middle of sampling or of a salient batch. Prompts come in short runs of one kind, as a user iterating on seeds or mask settings does.

Every prompt is checked against what it should do (outputs written / rejected / failed with a message naming the
fix and no traceback / interrupted) within a per-prompt timeout; the server's RSS is read from /proc after each one,
and the in-process probe (``comfy_probe_nodes/``) counts the models the pack's caches hold and the live copies.
"""
from __future__ import annotations

import asyncio
import copy
import json
import os
import random
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sb_testkit.comfy_server import PACK_ROOT, ComfyRunError, ComfyServer
from sb_testkit.images import object_on_background

API_DIR = PACK_ROOT / "workflows" / "api"
MAKE_BASE_MODELS = PACK_ROOT / "tests" / "integration" / "make_base_models.py"
SALIENT = "ckpt_fast.pth"                 # random InSPyReNet, fast mode (384)
SAM = "sam_vit_b_01ec64.pth"              # the name the workflows use; a tiny random SAM in Meta's layout
CHECKPOINT = "sd-v1-5-inpainting.safetensors"
CONTROLNET = "salient_controlnet_sd15"
OTHER_BASE_CONTROLNET = "salient_controlnet_sdxl"
# name in the server's model folders -> file that make_base_models.py writes
GENERATION_FILES = {f"checkpoints/{CHECKPOINT}": "sd15_inpainting_random.safetensors",
                    f"controlnet/{CONTROLNET}": "salient_controlnet_sd15",
                    f"controlnet/{OTHER_BASE_CONTROLNET}": "salient_controlnet_sdxl"}
FRAME = 64                                 # the inpainting canvas, lowered from 512/1024
PHOTO_SIZES = [(64, 64), (48, 80), (96, 72), (72, 128), (120, 90)]  # (height, width)
CLIENT_ID = "salient-bg-tests"             # the harness's client id: the server sends it the progress events
ERROR_TYPES = ("InputError", "CheckpointError", "BaseMismatchError", "NotAnInpaintingModelError")
# nn.Module classes whose live copies the probe counts, with how many one prompt of the soak may need: the salient
# network, SAM, ComfyUI's UNet and the salient ControlNet (ComfyUI's cldm ControlNet as the pack's loader subclasses it)
MODEL_COPIES = {"InSPyReNet": 1, "Sam": 1, "UNetModel": 1, "SalientInpaintControlNet": 1}
CACHE_OF = {"InSPyReNet": "salient", "Sam": "sam"}  # the pack's model cache holding each network, one per file
PROBE_EVERY = 25  # prompts between two probes (each walks the server's objects: about a second)


# ---------------------------------------------------------------------------------------------------- setup
def place_models(server: ComfyServer, models_cache: Path) -> None:
    """Random models under the names the soak's prompts use. The SD1.5 files are built once into ``models_cache``
    by make_base_models.py (in the server's Python) and symlinked."""
    from sb_testkit.inspyrenet import write_random_checkpoint
    from sb_testkit.sam import save_random_sam

    for path, write in ((server.models_dir / "salient" / SALIENT, lambda p: write_random_checkpoint(p, "fast", 0)),
                        (server.models_dir / "sams" / SAM, lambda p: save_random_sam(p, "tiny", 0))):
        if not path.exists():
            write(path.with_suffix(".tmp"))
            path.with_suffix(".tmp").rename(path)
    proc = subprocess.run([server.python, str(MAKE_BASE_MODELS), str(server.root), str(models_cache)],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"make_base_models.py failed:\n{proc.stdout[-3000:]}{proc.stderr[-5000:]}")
    for name, source in GENERATION_FILES.items():
        link = server.models_dir / name
        if not link.exists():
            link.symlink_to(models_cache / source, target_is_directory=(models_cache / source).is_dir())


def default_models_cache() -> Path:
    """Where the integration tests keep make_base_models.py's files (``SB_BASE_MODELS_DIR``), shared with them."""
    return Path(os.environ.get("SB_BASE_MODELS_DIR") or Path(tempfile.gettempdir()) / "sb_base_models")


def write_inputs(server: ComfyServer) -> list[str]:
    """Photos of several small sizes (a disk on a texture), each with its object mask ``<name>_mask.png``; returns
    the photo names."""
    names = []
    for k, (h, w) in enumerate(PHOTO_SIZES):
        image, mask = object_on_background(h, w, seed=100 + k)
        name = f"soak_photo_{k}_{w}x{h}.png"
        Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).save(server.input_dir / name)
        Image.fromarray((mask.numpy() * 255).round().astype(np.uint8), mode="L").save(
            server.input_dir / mask_name(name))
        names.append(name)
    return names


def mask_name(photo: str) -> str:
    return photo[:-4] + "_mask.png"


# ---------------------------------------------------------------------------------------------------- prompts
@dataclass
class SoakPrompt:
    kind: str
    prompt: dict
    expect: str = "ok"                      # ok | rejected | error | interrupted
    fix_words: tuple[str, ...] = ()         # what the failure message must say (the fix)
    interrupt_node: str | None = None       # interrupt once this node reports progress
    interrupt_node_type: str | None = None


def load_workflow(name: str) -> dict:
    return json.loads((API_DIR / name).read_text())


def shipped_workflows() -> list[str]:
    return sorted(p.name for p in API_DIR.glob("*.json"))


@dataclass(frozen=True)
class Run:
    """What stays the same over a run of prompts of one kind (a user trying seeds on one photo): the photo and the
    batch sizes. ComfyUI then reuses the salient mask of the run's first prompt, as it does for a user."""
    photo: str
    batch: int = 1


def point_at_soak_models(prompt: dict, rng: random.Random, run: Run) -> dict:
    """The workflow with model names pointed at the soak's random models, the cost lowered, the run's photo and
    batch sizes, and seeds and strength drawn from ``rng``."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = CHECKPOINT
        elif kind == "SalientBG_ControlNetLoader":
            inputs["controlnet"] = CONTROLNET
        elif kind == "SalientBG_LoadSalientModel":
            inputs["checkpoint"], inputs["mode"] = SALIENT, "fast"
        elif kind == "SalientBG_SAMLoader":
            inputs["sam_name"] = SAM
        elif kind == "LoadImage":
            inputs["image"] = run.photo
        elif kind == "SalientBG_SalientMask":  # the network at the small photos' own size, not 384 (cost)
            inputs["batch_size"], inputs["resize"] = run.batch, "dynamic"
        elif kind == "SalientBG_FrameForSD2":
            inputs["size"] = FRAME
        elif kind == "KSampler":
            inputs["steps"], inputs["seed"] = 1, rng.randrange(2 ** 32)
        elif kind == "SalientBG_MaskRefine":  # what a user tunes on a cut-out: only the nodes after it run again
            inputs["threshold"], inputs["grow"], inputs["feather"] = (
                rng.choice([0.0, 0.3, 0.5]), rng.randint(-2, 2), rng.randint(0, 2))
        elif kind == "RepeatLatentBatch":
            inputs["amount"] = run.batch
        elif kind == "SalientBG_ControlNetConditioning" and inputs["strength"] != 0.0:  # 0 = the SI2 baseline arm
            inputs["strength"] = round(rng.uniform(0.2, 2.0), 2)
        elif kind in ("SalientBG_ObjectExpansionScore", "SalientBG_QualityGate", "SalientBG_SAMRefineMask"):
            inputs["seed"] = rng.randrange(2 ** 16)
        if kind == "SaveImage":
            inputs["filename_prefix"] = "soak/" + inputs["filename_prefix"].rsplit("/", 1)[-1]
    return prompt


def _batched_cutout(rng: random.Random, run: Run, amount: int | None = None) -> dict:
    """The cut-out workflow on a batch: the photo repeated (core RepeatImageBatch), ``run.batch + 1`` times."""
    prompt = point_at_soak_models(load_workflow("cutout_rgba_batch.json"), rng, run)
    loader = _node(prompt, "LoadImage")
    for node in prompt.values():
        for key, value in node["inputs"].items():
            if value == [loader, 0]:
                node["inputs"][key] = ["batch", 0]
    prompt["batch"] = {"class_type": "RepeatImageBatch", "inputs": {"image": [loader, 0],
                                                                    "amount": amount or run.batch + 1}}
    return prompt


def _node(prompt: dict, class_type: str) -> str:
    return next(nid for nid, n in prompt.items() if n["class_type"] == class_type)


def _wrong_mask_size(rng: random.Random, photos: list[str], consumer: str) -> dict:
    """A photo with the object mask of a photo of another size, into the framing, SAM refine or paste-back node."""
    photo, other = rng.sample(photos, 2)
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": photo}},
              "2": {"class_type": "LoadImageMask", "inputs": {"image": mask_name(other), "channel": "red"}}}
    if consumer == "frame":
        prompt["3"] = {"class_type": "SalientBG_FrameForSD2", "inputs": {
            "image": ["1", 0], "mode": "crop around object", "size": FRAME, "upscale_small": False, "margin": 0.25,
            "object_mask": ["2", 0]}}
        prompt["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}
    elif consumer == "sam":
        prompt["3"] = {"class_type": "SalientBG_SAMLoader", "inputs": {"sam_name": SAM}}
        prompt["4"] = {"class_type": "SalientBG_SAMRefineMask", "inputs": {
            "sam": ["3", 0], "image": ["1", 0], "object_mask": ["2", 0], "mode": "replace", "points": 8,
            "seed": rng.randrange(100), "negative_points": True, "box": False, "mask_choice": "auto"}}
        prompt["5"] = {"class_type": "MaskToImage", "inputs": {"mask": ["4", 0]}}
        prompt["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}
    else:
        prompt["3"] = {"class_type": "SalientBG_PasteObjectBack", "inputs": {
            "image": ["1", 0], "original_image": ["1", 0], "object_mask": ["2", 0], "erode": 2, "feather": 4}}
        prompt["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}
    return prompt


def _generation(rng: random.Random, run: Run) -> dict:
    return point_at_soak_models(load_workflow("background_generation_paper_sd15.json"), rng, run)


def valid_prompt(kind: str, rng: random.Random, run: Run) -> SoakPrompt:
    if kind == "cutout_batch":
        return SoakPrompt(kind, _batched_cutout(rng, run))
    return SoakPrompt(kind, point_at_soak_models(load_workflow(kind + ".json"), rng, run))


def invalid_prompt(kind: str, rng: random.Random, run: Run, photos: list[str]) -> SoakPrompt:
    if kind == "missing_photo":
        prompt = point_at_soak_models(load_workflow("cutout_rgba_batch.json"), rng, Run("no_such_photo.png"))
        return SoakPrompt(kind, prompt, "rejected", ("no_such_photo.png",))
    if kind == "missing_salient_checkpoint":
        prompt = point_at_soak_models(load_workflow("cutout_rgba_batch.json"), rng, run)
        prompt[_node(prompt, "SalientBG_LoadSalientModel")]["inputs"]["checkpoint"] = "ckpt_missing.pth"
        return SoakPrompt(kind, prompt, "rejected", ("ckpt_missing.pth", "salient"))
    if kind == "missing_sam":
        prompt = point_at_soak_models(load_workflow("product_shots_sam_crop_pasteback.json"), rng, run)
        prompt[_node(prompt, "SalientBG_SAMLoader")]["inputs"]["sam_name"] = "sam_missing.pth"
        return SoakPrompt(kind, prompt, "rejected", ("sam_missing.pth", "sams"))
    if kind.startswith("wrong_mask_size_"):
        consumer = kind.rsplit("_", 1)[-1]
        words = ("Restore Frame",) if consumer == "paste" else ("give a mask made from this image",)
        return SoakPrompt(kind, _wrong_mask_size(rng, photos, consumer), "error", words)
    if kind == "mismatched_base":
        prompt = _generation(rng, run)
        prompt[_node(prompt, "SalientBG_ControlNetLoader")]["inputs"]["controlnet"] = OTHER_BASE_CONTROLNET
        return SoakPrompt(kind, prompt, "error", ("Load Checkpoint",))
    if kind == "nan_strength":
        prompt = _generation(rng, run)
        prompt[_node(prompt, "SalientBG_ControlNetConditioning")]["inputs"]["strength"] = float("nan")
        return SoakPrompt(kind, prompt, "error", ("strength",))
    if kind == "interrupt_sampling":
        prompt = _generation(rng, run)
        sampler = _node(prompt, "KSampler")
        prompt[sampler]["inputs"]["steps"] = 40
        return SoakPrompt(kind, prompt, "interrupted", interrupt_node=sampler, interrupt_node_type="KSampler")
    if kind == "interrupt_salient":
        prompt = _batched_cutout(rng, run, amount=4)  # 4 images, one per forward pass: interrupted after the first
        segment = _node(prompt, "SalientBG_SalientMask")
        prompt[segment]["inputs"]["batch_size"] = 1
        return SoakPrompt(kind, prompt, "interrupted", interrupt_node=segment,
                          interrupt_node_type="SalientBG_SalientMask")
    raise ValueError(f"unknown invalid kind {kind!r}")


VALID_KINDS = ["cutout_batch"] + [name[:-5] for name in shipped_workflows()]
INVALID_KINDS = ["missing_photo", "missing_salient_checkpoint", "missing_sam", "wrong_mask_size_frame",
                 "wrong_mask_size_sam", "wrong_mask_size_paste", "mismatched_base", "nan_strength",
                 "interrupt_sampling", "interrupt_salient"]
# relative frequency of each kind in the stream. On a shared 2-core CPU a generation prompt costs minutes (SD1.5 at
# full size, random weights) and a cut-out whose mask ComfyUI reuses about a second: the cheap kinds dominate the
# count, every generation workflow and fault still comes back several times in a few hundred prompts.
CHEAP_FAULTS = ["missing_photo", "missing_salient_checkpoint", "missing_sam", "wrong_mask_size_frame",
                "wrong_mask_size_sam", "wrong_mask_size_paste"]
WEIGHTS = {"cutout_rgba_batch": 12, "cutout_batch": 3, **{k: 3 for k in CHEAP_FAULTS},
           **{k: 1 for k in VALID_KINDS + INVALID_KINDS if k not in CHEAP_FAULTS and not k.startswith("cutout")}}
RUN_LENGTH = {"cutout_rgba_batch": 6, "cutout_batch": 3}  # most prompts in a run of one kind (others: 2)


def build_stream(count: int, photos: list[str], seed: int = 0) -> list[SoakPrompt]:
    """``count`` prompts: one of every kind first (the warm-up, on one photo), then runs of prompts of one kind (a
    photo and batch size per run; seeds, strengths and mask settings per prompt)."""
    rng = random.Random(seed)
    warm = Run(photos[0], 1)
    stream = [make_prompt(kind, rng, warm, photos) for kind in VALID_KINDS + INVALID_KINDS]
    names, weights = zip(*sorted(WEIGHTS.items()))
    while len(stream) < count:
        kind = rng.choices(names, weights)[0]
        run = Run(rng.choice(photos), rng.choice([1, 2]))
        stream += [make_prompt(kind, rng, run, photos) for _ in range(rng.randint(1, RUN_LENGTH.get(kind, 2)))]
    return stream[:count]


def make_prompt(kind: str, rng: random.Random, run: Run, photos: list[str]) -> SoakPrompt:
    return invalid_prompt(kind, rng, run, photos) if kind in INVALID_KINDS else valid_prompt(kind, rng, run)


# ---------------------------------------------------------------------------------------------------- running
class ProgressWatcher:
    """Listens on ComfyUI's websocket (as the frontend does) and remembers which (prompt, node) reported progress."""

    def __init__(self, server: ComfyServer):
        self.url = server.base_url.replace("http://", "ws://") + f"/ws?clientId={CLIENT_ID}"
        self.seen: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    async def _listen(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session, session.ws_connect(self.url) as ws:
            while not self._stop.is_set():
                try:
                    msg = await ws.receive(timeout=0.5)
                except asyncio.TimeoutError:
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if data.get("type") == "progress":
                    self.seen.add((data["data"].get("prompt_id"), str(data["data"].get("node"))))

    def wait_for(self, prompt_id: str, node: str, timeout: float, finished) -> bool:
        """True once ``node`` of ``prompt_id`` reported progress; False if ``finished()`` first, or at the timeout."""
        deadline = time.monotonic() + timeout
        last_check = 0.0
        while (prompt_id, node) not in self.seen:
            now = time.monotonic()
            if now > deadline:
                return False
            if now - last_check > 0.5:
                last_check = now
                if finished():
                    return False
            time.sleep(0.02)
        return True


@dataclass
class Outcome:
    index: int
    kind: str
    expect: str
    got: str                       # ok | rejected | error | interrupted | stuck | wrong
    seconds: float
    rss: int
    message: str = ""
    loaded: str = ""               # the models ComfyUI held after the prompt (RSS is compared within one such set)
    rss_in_use: int | None = None  # at a probe: RSS once the allocator has returned its free memory (malloc_trim)
    problems: list[str] = field(default_factory=list)


def _history_failure(entry: dict) -> tuple[str, str, str]:
    """(event, node type, message) of a failed prompt from /history."""
    for event, data in (entry.get("status") or {}).get("messages", []):
        if event == "execution_error":
            return event, data.get("node_type", ""), f"{data.get('exception_type')}: {data.get('exception_message')}"
        if event == "execution_interrupted":
            return event, data.get("node_type", ""), "interrupted"
    return "", "", "failed without an execution_error message"


def wait_for_entry(server: ComfyServer, prompt_id: str, timeout: float) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = server.history_entry(prompt_id, timeout=max(60.0, deadline - time.monotonic()))
        status = (entry or {}).get("status") or {}
        if entry and (status.get("completed") or status.get("status_str") in ("success", "error")):
            return entry
        if server.proc.poll() is not None:
            raise ComfyRunError(f"ComfyUI died (exit {server.proc.returncode}):\n{server.log_tail()}")
        time.sleep(0.1)
    return None


def run_one(server: ComfyServer, watcher: ProgressWatcher, item: SoakPrompt, index: int, timeout: float) -> Outcome:
    start = time.monotonic()
    outcome = Outcome(index, item.kind, item.expect, "", 0.0, 0)
    try:
        prompt_id = server.post_prompt(item.prompt)
    except ComfyRunError as exc:
        outcome.got, outcome.message = "rejected", str(exc)
    else:
        if item.interrupt_node and watcher.wait_for(prompt_id, item.interrupt_node, timeout,
                                                    lambda: server.history_entry(prompt_id, timeout=timeout) is not None):
            server.interrupt(prompt_id)
        entry = wait_for_entry(server, prompt_id, timeout)
        if entry is None:
            outcome.got, outcome.message = "stuck", f"no result within {timeout:.0f} s"
            server.interrupt(prompt_id)  # free the queue for the next prompt; the soak fails on this anyway
            wait_for_entry(server, prompt_id, timeout)
        elif (entry.get("status") or {}).get("status_str") == "success":
            outcome.got = "ok"
            outcome.problems += _missing_outputs(server, item.prompt, entry.get("outputs", {}))
        else:
            event, node_type, outcome.message = _history_failure(entry)
            outcome.got = "interrupted" if event == "execution_interrupted" else "error"
            if outcome.got == "interrupted" and item.interrupt_node_type and node_type != item.interrupt_node_type:
                outcome.problems.append(f"interrupted in {node_type}, not in {item.interrupt_node_type}")
            if outcome.got == "error" and not outcome.message.split(":")[0].endswith(ERROR_TYPES):
                outcome.problems.append("not one of the pack's errors for a person")
    outcome.seconds = time.monotonic() - start
    outcome.rss = server.rss_bytes()
    outcome.loaded = ",".join(sorted(server.probe()["loaded_models"]))
    outcome.problems += _message_problems(item, outcome)
    return outcome


def _missing_outputs(server: ComfyServer, prompt: dict, outputs: dict) -> list[str]:
    problems = []
    for nid, node in prompt.items():
        if node["class_type"] in ("SaveImage", "PreviewImage"):
            items = outputs.get(nid, {}).get("images", [])
            if not items:
                problems.append(f"node {nid} ({node['class_type']}) reported no image")
            elif node["class_type"] == "SaveImage" and not all(p.is_file() for p in server.output_files(outputs, nid)):
                problems.append(f"node {nid} reported a file that is not there")
    return problems


def _message_problems(item: SoakPrompt, outcome: Outcome) -> list[str]:
    if outcome.got != item.expect:
        return [f"expected {item.expect}, got {outcome.got}"]
    problems = []
    if "Traceback" in outcome.message:
        problems.append("the message shown to the user holds a Python traceback")
    problems += [f"the message does not say {w!r}" for w in item.fix_words if w not in outcome.message]
    return problems


# ---------------------------------------------------------------------------------------------------- figures
@dataclass
class SoakReport:
    outcomes: list[Outcome]
    warmup: int
    seconds: float
    queue_at_end: tuple[int, int]
    probes: list[dict]             # the in-process probe every PROBE_EVERY prompts and at the end
    stopped_early: bool

    @property
    def probe(self) -> dict:
        return self.probes[-1]

    def most_live_copies(self) -> dict[str, int]:
        return {name: max(p["live_modules"].get(name, 0) for p in self.probes) for name in MODEL_COPIES}

    @property
    def unexpected(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.problems]

    def count(self, got: str, expected: bool = True) -> int:
        return sum(1 for o in self.outcomes if o.got == got and (not o.problems) == expected)

    def _groups(self) -> dict[str, list[Outcome]]:
        """The prompts after the warm-up by the set of models ComfyUI held after them: loading or dropping a model
        moves RSS by its size, which is not growth, so RSS is compared within one set."""
        groups: dict[str, list[Outcome]] = {}
        for o in self.outcomes[self.warmup:]:
            groups.setdefault(o.loaded, []).append(o)
        return groups

    def rss_growth_per_100(self) -> dict[str, float]:
        """Growth of the RSS peak within each set of models ComfyUI holds: the peak over the later half of the set's
        prompts against the earlier half, MB per 100 prompts (at least 4 prompts spread over 10)."""
        slopes = {state: _peak_growth(group, lambda o: o.rss) for state, group in self._groups().items()}
        return {state: slope for state, slope in slopes.items() if slope is not None}

    def in_use_growth_per_100(self) -> dict[str, float]:
        """Growth of the memory in use (RSS after malloc_trim, at the probes) across the whole soak within each set of
        models: what a leak per load, per prompt or per failure leaves, and what allocator caching cannot explain."""
        slopes = {state: _slope([o for o in group if o.rss_in_use is not None], lambda o: o.rss_in_use)
                  for state, group in self._groups().items()}
        return {state: slope for state, slope in slopes.items() if slope is not None}

    def raw_growth_per_100(self) -> dict[str, float]:
        """RSS against the prompt index across the whole soak within each set of models (loads and drops of other
        models in between included): reported, not bounded -- memory freed by a dropped model and kept by the
        allocator shows here as a step, not as use."""
        slopes = {state: _slope(group, lambda o: o.rss) for state, group in self._groups().items()}
        return {state: slope for state, slope in slopes.items() if slope is not None}

    def lines(self, bound_mb: float) -> list[str]:
        n = len(self.outcomes)
        rss = [o.rss / 2 ** 20 for o in self.outcomes]
        post = rss[self.warmup:] or rss
        slopes = self.rss_growth_per_100()
        kinds = sorted({o.kind for o in self.outcomes})
        out = [
            f"prompts: {n} in {self.seconds / 60:.1f} min ({'stopped at the time bound' if self.stopped_early else 'all sent'})",
            f"completed: {self.count('ok')}; failed as expected: {n - self.count('ok') - len(self.unexpected)} "
            f"(rejected {self.count('rejected')}, node errors {self.count('error')}, interrupted {self.count('interrupted')}); "
            f"unexpected: {len(self.unexpected)}",
            f"slowest prompt: {max(o.seconds for o in self.outcomes):.1f} s; queue at the end: running {self.queue_at_end[0]}, "
            f"pending {self.queue_at_end[1]}",
            f"RSS MB: after warm-up ({self.warmup} prompts) {post[0]:.0f}, min {min(post):.0f}, max {max(post):.0f}, "
            f"end {rss[-1]:.0f}",
            "RSS peak growth per 100 prompts after warm-up (later half vs earlier half, within one set of models): "
            + self._growth_line(slopes) + f" (bound {bound_mb:.0f} MB)",
            "growth of the memory in use (RSS after malloc_trim, at the probes) per 100 prompts across the soak: "
            + self._growth_line(self.in_use_growth_per_100()) + f" (bound {bound_mb:.0f} MB); at the probes: "
            + ", ".join(f"#{o.index} {o.rss / 2 ** 20:.0f}->{o.rss_in_use / 2 ** 20:.0f}" for o in self.outcomes
                        if o.rss_in_use is not None),
            "RSS per 100 prompts across the soak, loads of other models in between (not bounded): "
            + self._growth_line(self.raw_growth_per_100()),
            f"pack model caches: {json.dumps(self.probe.get('model_caches'))}",
            f"live model copies, most seen in {len(self.probes)} probes: {json.dumps(self.most_live_copies())}; "
            f"ComfyUI's loaded models at the end: {json.dumps(self.probe.get('loaded_models'))}",
            "per kind (ok/expected failure/unexpected): " + ", ".join(
                f"{k} {sum(o.got == 'ok' and not o.problems for o in self.outcomes if o.kind == k)}/"
                f"{sum(o.got != 'ok' and not o.problems for o in self.outcomes if o.kind == k)}/"
                f"{sum(bool(o.problems) for o in self.outcomes if o.kind == k)}" for k in kinds),
        ]
        for o in self.unexpected[:20]:
            out.append(f"UNEXPECTED #{o.index} {o.kind}: {'; '.join(o.problems)} | {o.message[:400]}")
        return out

    def _growth_line(self, slopes: dict[str, float]) -> str:
        groups = self._groups()
        return "; ".join(f"{v:+.1f} MB over {len(groups[k])} prompts holding [{k}]" for k, v in slopes.items()) \
            or "n/a (too few prompts)"

    def failures(self, bound_mb: float) -> list[str]:
        """What makes the soak fail: unexpected outcomes, a queue not empty, RSS growth over the bound, a model held
        twice."""
        problems = [f"{len(self.unexpected)} unexpected outcomes"] if self.unexpected else []
        if self.queue_at_end != (0, 0):
            problems.append(f"queue not empty at the end: {self.queue_at_end}")
        for what, slope in self.rss_growth_per_100().items():
            if slope > bound_mb:
                problems.append(f"RSS peak grows {slope:.1f} MB per 100 prompts holding [{what}] (bound {bound_mb:.0f})")
        for what, slope in self.in_use_growth_per_100().items():
            if slope > bound_mb:
                problems.append(f"memory in use grows {slope:.1f} MB per 100 prompts holding [{what}] "
                                f"(bound {bound_mb:.0f})")
        for probe in self.probes:
            problems += [p for p in model_copy_problems(probe) if p not in problems]
        return problems


def _slope(outcomes: list[Outcome], value) -> float | None:
    """Least-squares slope of ``value(outcome)`` (bytes, as MB) against the prompt index, per 100 prompts."""
    x = np.array([o.index for o in outcomes], dtype=np.float64)
    y = np.array([value(o) / 2 ** 20 for o in outcomes], dtype=np.float64)
    if len(outcomes) < 4 or np.ptp(x) < 10:
        return None
    return float(np.polyfit(x, y, 1)[0] * 100)


def _peak_growth(outcomes: list[Outcome], value) -> float | None:
    """How much the peak of ``value`` (MB) rose from the earlier half of ``outcomes`` to the later half, per 100
    prompts between the halves' centres: what keeps growing shows; what climbs to a plateau (an allocator taking
    back its working memory after a probe's trim, memory kept after a model is dropped) and steps down do not."""
    if len(outcomes) < 4 or outcomes[-1].index - outcomes[0].index < 10:
        return None
    half = len(outcomes) // 2
    early, late = outcomes[:half], outcomes[half:]
    rise = max(value(o) for o in late) / 2 ** 20 - max(value(o) for o in early) / 2 ** 20
    distance = np.mean([o.index for o in late]) - np.mean([o.index for o in early])
    return float(rise / distance * 100)


def model_copy_problems(probe: dict) -> list[str]:
    """One copy of each model: no file twice in the pack's caches, and no more live copies of each network than
    one prompt of the soak uses (:data:`MODEL_COPIES`; one salient and one SAM file in the whole soak)."""
    problems = []
    for cache, keys in (probe.get("model_caches") or {}).items():
        paths = [k[0] for k in keys]
        if len(paths) != len(set(paths)):
            problems.append(f"the {cache} cache holds a file twice: {keys}")
    if not probe.get("cache_module_found"):
        problems.append("the probe did not find the pack's model cache module")
    live = probe.get("live_modules") or {}
    cached = {name: len((probe.get("model_caches") or {}).get(cache, [])) for name, cache in CACHE_OF.items()}
    for name, bound in MODEL_COPIES.items():
        bound = max(bound, cached.get(name, 0))  # a server that other tests used holds their files too, each once
        if live.get(name, 0) > bound:
            problems.append(f"{live[name]} live {name} objects (at most {bound} expected)")
    return problems


def soak(server: ComfyServer, stream: list[SoakPrompt], *, warmup: int, timeout: float, max_seconds: float,
         log=print) -> SoakReport:
    """Send the prompts one after another (each waited for, ``timeout`` s at most); stop early past ``max_seconds``."""
    outcomes: list[Outcome] = []
    probes: list[dict] = []
    start = time.monotonic()
    stopped = False
    with ProgressWatcher(server) as watcher:
        time.sleep(0.5)  # the websocket connects before the first prompt
        for index, item in enumerate(stream):
            if time.monotonic() - start > max_seconds:
                stopped = True
                break
            outcome = run_one(server, watcher, item, index, timeout)
            outcomes.append(outcome)
            if index % PROBE_EVERY == PROBE_EVERY - 1:
                probes.append(server.probe(tuple(MODEL_COPIES), trim=True))
                outcome.rss_in_use = probes[-1].get("rss_after_trim")
            if log and (index % 10 == 0 or outcome.problems):
                log(f"[soak] #{index} {item.kind}: {outcome.got} in {outcome.seconds:.1f} s, RSS {outcome.rss / 2 ** 20:.0f} MB"
                    + (f"  PROBLEM: {outcome.problems} {outcome.message[:300]}" if outcome.problems else ""))
    queue = server.queue_sizes()
    probes.append(server.probe(tuple(MODEL_COPIES), trim=True))
    return SoakReport(outcomes, min(warmup, len(outcomes)), time.monotonic() - start, queue, probes, stopped)

