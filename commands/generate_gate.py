"""``generate``'s quality gate: ``--candidates N`` seeds per (photo, prompt), the best ``--keep K`` kept by object
expansion (SAM, ``--gate-sam``), ``--max-expansion X`` re-generating with new seeds up to ``--max-tries`` rounds
(the policy itself is :mod:`models.scoring.gate`).

Files, per (photo, prompt) row ``<tag>``: every candidate in ``candidates/<tag>_s<seed>.png`` and, after each
round, ``candidates/<tag>.gate.json`` (the attempts so far and the settings they were made with), both written
atomically by the process that owns the photo. A run stopped mid-photo resumes from that record: the rounds it
holds are not generated or scored again. The kept images go to ``generated/<tag>_s<seed>.png`` under their own seed
and the manifest row gets ``gate`` (policy, status ``passed`` / ``gate_failed``, rounds, every attempt with its
seed and scores); an item that never passes keeps its best attempts, flagged ``gate_failed``.

The plan (:mod:`.generate_plan`) makes K jobs per row as without the gate; a job's seed there only numbers the kept
slot. A row is done when its manifest row carries a gate record made with the same settings and its K images.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from typing import Optional

from ..models.errors import InputError
from ..models.runs.atomic import write_json_atomically
from ..models.scoring import gate

log = logging.getLogger("salient_background")

CANDIDATES = "candidates"
GATE_POINTS = 8  # the evaluator's default: the score the gate keeps by is the one `evaluate` reports


def add_gate_options(parser) -> None:
    group = parser.add_argument_group("quality gate (keep the least expanded of N candidates; needs --gate-sam)")
    group.add_argument("--candidates", type=int, default=1, metavar="N",
                       help="seeds generated per photo and prompt, as one batch per round (default 1 = no gate)")
    group.add_argument("--keep", type=int, default=None, metavar="K",
                       help="images kept per photo and prompt, the least expanded (default 1; replaces --num-images)")
    group.add_argument("--max-expansion", type=float, default=None, metavar="X",
                       help="pass threshold, SAM's object outside the mask as a fraction of the object's area (0.05 = "
                            "5 %%): while fewer than K pass, N new seeds are generated, up to --max-tries rounds")
    group.add_argument("--max-tries", type=int, default=3, metavar="T",
                       help="rounds of N candidates at most, the first included (default 3; with --max-expansion)")
    group.add_argument("--gate-sam", metavar="PATH", help="SAM checkpoint that scores the candidates "
                                                          "(sam_vit_b_01ec64.pth, sam_vit_h_4b8939.pth ...)")


def gate_policy(args) -> Optional[gate.GatePolicy]:
    """The run's policy, or None when no gate option is given."""
    if args.candidates == 1 and args.keep is None and args.max_expansion is None:
        return None
    return gate.GatePolicy(candidates=args.candidates, keep=1 if args.keep is None else args.keep,
                           max_expansion=args.max_expansion, max_tries=args.max_tries)


def check_gate_options(args) -> None:
    """Cheap checks before any model loads; with the gate, the plan makes ``--keep`` jobs per row."""
    policy = gate_policy(args)
    if policy is None:
        return
    if args.num_images != 1:
        raise InputError("--num-images does not go with the quality gate: --keep K says how many images to keep")
    if not args.gate_sam:
        raise InputError("the quality gate needs the SAM that scores the candidates: --gate-sam PATH "
                         "(e.g. models/sams/sam_vit_b_01ec64.pth; `python -m salient_background download sam`)")
    if not os.path.isfile(args.gate_sam):
        raise InputError(f"--gate-sam {args.gate_sam!r} is not a file")
    args.num_images = policy.keep


def planned_steps(job_count: int, args) -> int:
    """The bar's steps for ``job_count`` jobs: each job's steps, or with the gate each row's first round (its
    ``--keep`` jobs make ``--candidates`` images); a further round adds to the bar when it runs."""
    policy = gate_policy(args)
    if policy is None:
        return job_count * args.steps
    return job_count // policy.keep * policy.candidates * args.steps


def gate_settings(args) -> dict:
    """What the gate adds to a row's settings (another policy or SAM keeps other images)."""
    policy = gate_policy(args)
    if policy is None:
        return {}
    return {"gate": {**policy.as_dict(), "sam": os.path.abspath(args.gate_sam), "points": GATE_POINTS}}


def gated_todo(jobs: list, rows: dict, run: dict, overwrite: bool) -> list:
    """The jobs to do with the gate: every job of a row (its K kept slots go together), unless the row was already
    gated with these settings and still has all its kept images. (Slot seeds are no image's seed, so the plan's
    per-seed matching does not apply to gated rows.)"""
    def done(job) -> bool:
        row = rows.get(job.tag)
        return (row is not None and row.get("settings") == job.settings(run) and isinstance(row.get("gate"), dict)
                and len(row["images"]) == len(row["gate"].get("kept_seeds", [])))
    return [job for job in jobs if overwrite or not done(job)]


# ---------------------------------------------------------------------------------------------- in the runner
class GateRunner:
    """Runs the gate for the rows of the photos a :class:`PhotoRunner` computes, and annotates what it saves."""

    def __init__(self, args, out: str, settings: dict, device, progress):
        from ..models.networks.sam import load_sam

        self.args, self.out, self.settings, self.progress = args, out, settings, progress
        self.policy = gate_policy(args)
        self.sam = load_sam(args.gate_sam).model.to(device)
        self.folder = os.path.join(out, CANDIDATES)
        self.results: dict[str, gate.GateResult] = {}  # tag -> result, until its photo is saved

    def make(self, jobs: list, framed: dict, generate_batch, failed: dict) -> dict:
        """{job name: picture} for ``jobs`` (K per row, in order): each row's kept images, best first. A photo the
        gate cannot judge (an empty object mask) goes into ``failed`` (photo id -> ItemFailed); the others go on."""
        from ..models.runs.engine import ITEM_ERRORS, ItemFailed, failure_reason

        pictures = {}
        for tag_jobs in _by_tag(jobs).values():
            item_id = tag_jobs[0].item.id
            if item_id in failed:
                continue
            try:
                result = self._run_row(tag_jobs, framed, generate_batch)
            except ITEM_ERRORS as exc:
                failed[item_id] = ItemFailed(failure_reason(exc))
                continue
            self.results[tag_jobs[0].tag] = result
            pictures.update(zip((j.name for j in tag_jobs), result.images))
        return pictures

    def _run_row(self, tag_jobs: list, framed: dict, generate_batch) -> gate.GateResult:
        import numpy as np
        import torch

        first, tag = tag_jobs[0], tag_jobs[0].tag
        mask = torch.from_numpy(np.asarray(framed[first.item.id].mask, dtype=np.float32) / 255.0)
        settings = first.settings(self.settings)
        previous = [] if self.args.overwrite else self._recorded(tag, settings)
        log_records = [a.record() for a in previous]
        rounds = previous_rounds = len(previous) // self.policy.candidates
        for round_index in range(previous_rounds):  # recorded by a stopped run: on the bar, not generated again
            self._count_round(round_index, generated_now=False)

        def generate(seeds):
            nonlocal rounds
            self._count_round(rounds, generated_now=True)
            rounds += 1
            chunks = [[replace(first, seed=s) for s in seeds[i:i + self.args.batch_size]]
                      for i in range(0, len(seeds), self.args.batch_size)]
            # as the files hold them (8 bits): a resumed run then keeps exactly what an uninterrupted one keeps
            return torch.cat([_as_saved(generate_batch(chunk)) for chunk in chunks])

        def save_round(attempts, images):  # the files first, then the record naming them
            for attempt, image in zip(attempts, images):
                _save_picture(image, self._candidate_path(tag, attempt.seed))
            log_records.extend(a.record() for a in attempts)
            write_json_atomically(os.path.join(self.folder, f"{tag}.gate.json"),
                                  {"settings": settings, "attempts": log_records})

        os.makedirs(self.folder, exist_ok=True)
        scorer = gate.SamGateScorer(self.sam, mask, points=GATE_POINTS)
        return gate.run_gate(generate, scorer, self.policy, first.seed, previous=previous, on_round=save_round,
                             recall=lambda a: _read_picture(self._candidate_path(tag, a.seed)))

    def _count_round(self, round_index: int, *, generated_now: bool) -> None:
        """The bar planned each row's first round; a later one adds its steps. A round generated now advances the
        bar step by step as it runs; a recorded one at once."""
        steps = self.policy.candidates * self.args.steps
        if round_index > 0:
            self.progress.extend(steps)
        if not generated_now:
            self.progress.advance(steps)

    def _candidate_path(self, tag: str, seed: int) -> str:
        return os.path.join(self.folder, f"{tag}_s{seed}.png")

    def _recorded(self, tag: str, settings: dict) -> list:
        """Attempts an earlier, stopped run recorded for ``tag`` with these settings, whose files are all there."""
        path = os.path.join(self.folder, f"{tag}.gate.json")
        try:
            with open(path, encoding="utf-8") as fh:
                record = json.load(fh)
            if record.get("settings") != settings:
                return []
            attempts = [gate.Attempt.from_record(r) for r in record["attempts"]]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        whole = len(attempts) - len(attempts) % self.policy.candidates
        attempts = attempts[:whole]
        if not all(os.path.isfile(self._candidate_path(tag, a.seed)) for a in attempts):
            return []
        log.info("%s: resuming the quality gate after %d recorded candidate(s)", tag, len(attempts))
        return attempts

    def kept_jobs(self, work) -> list:
        """The photo's jobs renamed after the seeds they kept (``<tag>_s<seed>.png``), in the order of its pictures."""
        renamed = []
        for tag, tag_jobs in _by_tag(work.jobs).items():
            kept = self.results[tag].kept
            renamed += [replace(job, seed=a.seed, name=f"{tag}_s{a.seed}.png") for job, a in zip(tag_jobs, kept)]
        return renamed

    def annotate(self, work, rows: dict) -> None:
        """Each gated row of the photo gets its gate record; only its kept images stay listed."""
        for tag in _by_tag(work.jobs):
            result = self.results.pop(tag)
            kept = set(result.record()["kept_seeds"])
            rows[tag]["images"] = [im for im in rows[tag]["images"] if im["seed"] in kept]
            rows[tag]["gate"] = dict(result.record(), candidates_folder=CANDIDATES)


def _by_tag(jobs: list) -> dict:
    groups: dict = {}
    for job in jobs:
        groups.setdefault(job.tag, []).append(job)
    return groups


def _save_picture(image, path: str) -> None:
    from PIL import Image

    from ..models.imaging.image_ops import image_to_uint8
    from .files import save_image_atomically

    save_image_atomically(Image.fromarray(image_to_uint8(image)), path)


def _as_saved(images):
    """[B,H,W,3] float pictures rounded to the 8-bit values their PNG files hold."""
    import torch

    from ..models.imaging.image_ops import image_to_uint8

    return torch.stack([torch.from_numpy(image_to_uint8(im)).float() / 255.0 for im in images])


def _read_picture(path: str):
    from PIL import Image

    from ..models.imaging import image_ops

    with Image.open(path) as im:
        return image_ops.pil_to_image(im.convert("RGB"))[0][0]  # [H,W,3]


def summary(rows: dict) -> Optional[str]:
    """The run's gate counts over the manifest's gated rows (None when no row is gated)."""
    records = [row["gate"] for row in rows.values() if isinstance(row.get("gate"), dict)]
    return gate.summary_line(gate.summarise(records)) if records else None
