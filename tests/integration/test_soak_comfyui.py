"""A short soak of the real ComfyUI server (conftest.py): a few dozen prompts through the HTTP API, mixing every
shipped workflow (model names pointed at random models: SD1.5 inpainting for generation, see make_base_models.py)
with varied photos, masks, seeds, strengths and batch sizes, and prompts that must fail: a missing photo, salient
checkpoint or SAM; a mask of the wrong size into framing, SAM refine and paste-back; a ControlNet of another base;
a NaN strength; POST /interrupt in the middle of sampling and of a salient batch.

Asserted (``sb_testkit/comfy_soak.py``): every prompt does what it should within its timeout -- valid ones write
their images; each failure is rejected or fails in the expected node with the pack's error naming the fix and no
Python traceback in the message /history shows; interrupts stop the node that was running -- and the next prompts
still run; the queue is empty at the end; the pack's model caches hold each file once and one salient network and
one SAM are alive in the server. RSS is recorded after every prompt, but 5 prompts after the warm-up are too few
for the growth fit (it needs 4 prompts holding the same models, 10 apart): that is ``benchmarks/soak_comfyui.py``'s
job, with hundreds of prompts (figures in docs/reliability.md).

Run under ``flock /tmp/heavy.lock`` on shared machines (the SD1.5 files are ~2 GB each).
"""
from __future__ import annotations

import pytest

from sb_testkit import comfy_soak

PROMPTS = 24
RSS_BOUND_MB_PER_100 = 400.0  # applies only if a fit can be made (see above); the long soak's default is 50


@pytest.fixture(scope="module")
def soak_server(comfy):
    comfy_soak.place_models(comfy, comfy_soak.default_models_cache())
    return comfy, comfy_soak.write_inputs(comfy)


def test_stream_covers_every_workflow_and_every_fault():
    """The warm-up alone holds one prompt of each kind; every shipped workflow and fault is a kind."""
    photos = [f"soak_photo_{k}_{w}x{h}.png" for k, (h, w) in enumerate(comfy_soak.PHOTO_SIZES)]
    stream = comfy_soak.build_stream(PROMPTS, photos, seed=1)
    kinds = [item.kind for item in stream]
    warmup = len(comfy_soak.VALID_KINDS) + len(comfy_soak.INVALID_KINDS)
    assert set(kinds[:warmup]) == set(comfy_soak.VALID_KINDS) | set(comfy_soak.INVALID_KINDS)
    assert {name[:-5] for name in comfy_soak.shipped_workflows()} <= set(kinds)
    assert {"ok", "rejected", "error", "interrupted"} == {item.expect for item in stream}


def test_short_soak(soak_server):
    comfy, photos = soak_server
    stream = comfy_soak.build_stream(PROMPTS, photos, seed=1)
    warmup = len(comfy_soak.VALID_KINDS) + len(comfy_soak.INVALID_KINDS)
    report = comfy_soak.soak(comfy, stream, warmup=warmup, timeout=900, max_seconds=3 * 3600)
    print("\n".join(report.lines(RSS_BOUND_MB_PER_100)))
    assert not report.stopped_early
    assert report.failures(RSS_BOUND_MB_PER_100) == []
    # each file once in the pack's caches, and as many live networks as cached files (the session's server may also
    # hold the files other test modules used)
    caches = report.probe["model_caches"]
    for cache in ("salient", "sam"):
        paths = [key[0] for key in caches[cache]]
        assert len(paths) == len(set(paths)) and any(p.endswith((comfy_soak.SALIENT, comfy_soak.SAM)) for p in paths)
    assert report.probe["live_modules"]["InSPyReNet"] == len(caches["salient"])
    assert report.probe["live_modules"]["Sam"] == len(caches["sam"])
    # the memory-in-use probe works inside the server (glibc's malloc_trim): what the long soak's bound rests on
    assert 0 < report.probe["rss_after_trim"] <= report.probe["rss_before_trim"]
