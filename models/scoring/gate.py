"""The quality gate: generate N candidates per (photo, prompt), score each with the object-expansion score, keep
the best K, and re-generate with new seeds while too few pass a threshold.

Policy (:class:`GatePolicy`):

* ``candidates`` N: seeds generated per round, as one batch.
* ``keep`` K: images kept per (photo, prompt), the K least expanded of *all* attempts (ties: higher SAM IoU, then
  the earlier attempt).
* ``max_expansion`` X (optional): a candidate *passes* when its ``expansion_relative`` (SAM's object outside the
  input mask, as a fraction of the object's area) is at most X. While fewer than K attempts pass, another round of
  N new seeds is generated, up to ``max_tries`` rounds (the first one included).
* An item whose kept images do not all pass after the last round is kept anyway (its best attempts) and marked
  ``gate_failed``: never dropped. Without X there is nothing to fail and one round is made (``ungated``).

Seeds are a pure function of the item's first seed: attempt k (0-based, over all rounds) uses ``first_seed + k``,
so round r holds seeds ``first_seed + r*N ... first_seed + r*N + N - 1``. A rerun, a resumed run and any number of
processes therefore make the same attempts and keep the same images.

Every attempt is recorded (:meth:`Attempt.record`: round, seed, every score, passed, kept, rank); a resumed run
hands the attempts it had recorded back as ``previous`` and :func:`run_gate` continues after them without
generating or scoring them again.

This module is pure logic: the generator and the scorer are callables. :class:`SamGateScorer` is the scorer the
command and the node use: it calls :func:`models.scoring.expansion.score_expansion` (one SAM image embedding per
candidate, the prompt points once per object mask).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterable, Optional, Sequence

import torch

from ..errors import InputError
from .expansion import ExpansionScore, score_expansion

PASSED, GATE_FAILED, UNGATED = "passed", "gate_failed", "ungated"

Generate = Callable[[list], torch.Tensor]  # seeds -> images [len(seeds),H,W,3] in 0..1
Score = Callable[[torch.Tensor], list]  # images [B,H,W,3] -> [ExpansionScore] * B


@dataclass(frozen=True)
class GatePolicy:
    candidates: int = 1
    keep: int = 1
    max_expansion: Optional[float] = None
    max_tries: int = 3

    def __post_init__(self):
        if self.candidates < 1:
            raise InputError(f"--candidates must be at least 1, got {self.candidates}")
        if not 1 <= self.keep <= self.candidates:
            raise InputError(f"--keep must be between 1 and --candidates ({self.candidates}), got {self.keep}")
        if self.max_expansion is not None and not (self.max_expansion >= 0 and math.isfinite(self.max_expansion)):
            raise InputError(f"--max-expansion is a fraction of the object's area (0.05 = 5 %), got {self.max_expansion}")
        if self.max_tries < 1:
            raise InputError(f"--max-tries counts generation rounds (the first one included): at least 1, got {self.max_tries}")

    @property
    def rounds_allowed(self) -> int:
        return 1 if self.max_expansion is None else self.max_tries

    def seeds_of_round(self, first_seed: int, round_index: int) -> list[int]:
        start = first_seed + round_index * self.candidates
        return list(range(start, start + self.candidates))

    def passes(self, score: ExpansionScore) -> Optional[bool]:
        """True / False against ``max_expansion``; None without a threshold. An undefined score never passes."""
        if self.max_expansion is None:
            return None
        value = score.expansion_relative
        return not math.isnan(value) and value <= self.max_expansion

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Attempt:
    """One generated candidate: which round and seed made it, and its scores."""

    index: int  # 0-based over the item's attempts
    round: int
    seed: Optional[int]
    score: ExpansionScore
    passed: Optional[bool] = None
    kept: bool = False
    rank: Optional[int] = None  # 0 = best of the item's attempts

    def order_key(self) -> tuple:
        """Least expanded first; ties: higher SAM IoU, then the earlier attempt; undefined scores last."""
        value, iou = self.score.expansion_relative, self.score.iou
        return (math.isnan(value), 0.0 if math.isnan(value) else value, -(0.0 if math.isnan(iou) else iou), self.index)

    def record(self) -> dict:
        """JSON-safe record (undefined scores as null)."""
        scores = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.score.as_dict().items()}
        return {"attempt": self.index, "round": self.round, "seed": self.seed, "passed": self.passed,
                "kept": self.kept, "rank": self.rank, **scores}

    @classmethod
    def from_record(cls, record: dict) -> "Attempt":
        names = ExpansionScore.__dataclass_fields__
        values = {k: (math.nan if record.get(k) is None and k not in ("width", "height", "object_px", "sam_px")
                      else record[k]) for k in names}
        return cls(index=int(record["attempt"]), round=int(record["round"]), seed=record.get("seed"),
                   score=ExpansionScore(**values), passed=record.get("passed"))


def attempts_from_scores(scores: Sequence[ExpansionScore], seeds: Sequence[Optional[int]], policy: GatePolicy,
                         *, round_index: int = 0, first_index: int = 0) -> list[Attempt]:
    return [Attempt(first_index + i, round_index, seed, score, policy.passes(score))
            for i, (seed, score) in enumerate(zip(seeds, scores, strict=True))]


def rank_attempts(attempts: Iterable[Attempt]) -> list[Attempt]:
    """The attempts best first, each with its ``rank`` set (a copy; the inputs are left as they are)."""
    ordered = sorted(attempts, key=Attempt.order_key)
    return [replace(a, rank=r) for r, a in enumerate(ordered)]


def enough_passed(attempts: Sequence[Attempt], policy: GatePolicy) -> bool:
    return policy.max_expansion is None or sum(bool(a.passed) for a in attempts) >= policy.keep


@dataclass
class GateResult:
    policy: GatePolicy
    attempts: list[Attempt]  # every attempt in the order made, with kept / rank filled in
    kept: list[Attempt]  # the kept ones, best first
    images: list[torch.Tensor] = field(repr=False)  # [H,W,3] of each kept attempt, in the order of ``kept``
    rounds: int

    @property
    def status(self) -> str:
        if self.policy.max_expansion is None:
            return UNGATED
        return PASSED if all(a.passed for a in self.kept) else GATE_FAILED

    def record(self) -> dict:
        """What the manifest keeps of the item's gate: the policy, status, rounds and every attempt."""
        return {"policy": self.policy.as_dict(), "status": self.status, "gate_failed": self.status == GATE_FAILED,
                "rounds": self.rounds, "kept_seeds": [a.seed for a in self.kept],
                "attempts": [a.record() for a in self.attempts]}


def _finish(policy: GatePolicy, attempts: list[Attempt], held: dict, recall, rounds: int) -> GateResult:
    ranked = rank_attempts(attempts)
    kept_index = {a.index for a in ranked[:policy.keep]}
    by_index = {a.index: replace(a, kept=a.index in kept_index) for a in ranked}
    final = [by_index[a.index] for a in attempts]
    kept = [by_index[a.index] for a in ranked[:policy.keep]]
    images = []
    for a in kept:
        if a.index in held:
            images.append(held[a.index])
        elif recall is not None:
            images.append(recall(a))
        else:
            raise ValueError(f"attempt {a.index} (seed {a.seed}) was made by an earlier run: give recall= to load it")
    return GateResult(policy, final, kept, images, rounds)


def _check_previous(previous: Sequence[Attempt], policy: GatePolicy, first_seed: int) -> int:
    """Rounds the previous attempts complete (they must be whole rounds of this policy's seeds)."""
    rounds = len(previous) // policy.candidates
    expected = [s for r in range(rounds) for s in policy.seeds_of_round(first_seed, r)]
    if len(previous) % policy.candidates or [a.seed for a in previous] != expected:
        raise ValueError(f"recorded attempts (seeds {[a.seed for a in previous]}) are not whole rounds of "
                         f"{policy.candidates} seeds from {first_seed}")
    return rounds


def run_gate(generate: Generate, score: Score, policy: GatePolicy, first_seed: int, *,
             previous: Sequence[Attempt] = (), recall: Optional[Callable[[Attempt], torch.Tensor]] = None,
             on_round: Optional[Callable[[list, torch.Tensor], None]] = None) -> GateResult:
    """Run ``policy`` for one (photo, prompt). ``generate(seeds)`` makes one round's candidates as a batch,
    ``score(images)`` scores them. ``on_round(attempts, images)`` is called after each round is scored (the
    command saves the candidates and journals their records there); ``previous`` are the attempts an earlier,
    interrupted run recorded, ``recall(attempt)`` loads the image of one of them when it ends up kept."""
    previous = sorted(previous, key=lambda a: a.index)
    rounds = _check_previous(previous, policy, first_seed)
    attempts = [replace(a, passed=policy.passes(a.score), kept=False, rank=None) for a in previous]
    held: dict[int, torch.Tensor] = {}  # images of the attempts that may be kept; the others are dropped
    while rounds < policy.rounds_allowed and not (rounds and enough_passed(attempts, policy)):
        seeds = policy.seeds_of_round(first_seed, rounds)
        images = generate(seeds)
        if images.shape[0] != len(seeds):
            raise ValueError(f"the generator returned {images.shape[0]} images for {len(seeds)} seeds")
        new = attempts_from_scores(score(images), seeds, policy, round_index=rounds, first_index=len(attempts))
        if on_round is not None:
            on_round(new, images)
        attempts += new
        held.update((a.index, images[i]) for i, a in enumerate(new))
        best = {a.index for a in rank_attempts(attempts)[:policy.keep]}
        held = {k: v for k, v in held.items() if k in best}
        rounds += 1
    return _finish(policy, attempts, held, recall, rounds)


class SamGateScorer:
    """Scores the candidates of one object mask: :func:`score_expansion` on each batch, the prompt points computed
    once for the mask (kept across rounds), one SAM image embedding per candidate."""

    def __init__(self, model: torch.nn.Module, object_mask: torch.Tensor, *, points: int = 8, seed: int = 0,
                 mask_choice: str = "auto", on_image_done: Optional[Callable[[], None]] = None):
        mask = object_mask if object_mask.ndim == 2 else object_mask.reshape(object_mask.shape[-2:])
        if not bool((mask >= 0.5).any()):
            raise InputError("the object mask is empty (no pixel >= 0.5): the gate has nothing to measure")
        self.model, self.mask = model, mask.float().cpu()
        self.options = dict(points=points, seed=seed, mask_choice=mask_choice)
        self.on_image_done = on_image_done
        self._prompts: dict = {}

    def __call__(self, images: torch.Tensor) -> list[ExpansionScore]:
        with torch.inference_mode():
            run = score_expansion(self.model, images, self.mask[None], prompt_cache=self._prompts,
                                  on_image_done=self.on_image_done, **self.options)
        return run.scores


def summarise(records: Iterable[dict]) -> dict:
    """Counts over items' gate records (:meth:`GateResult.record`): items, passed, gate_failed, ungated, items that
    needed retries, extra rounds, attempts and kept images."""
    out = dict(items=0, passed=0, gate_failed=0, ungated=0, retried_items=0, retry_rounds=0, attempts=0, kept=0)
    for rec in records:
        out["items"] += 1
        out[rec["status"]] += 1
        out["retried_items"] += rec["rounds"] > 1
        out["retry_rounds"] += rec["rounds"] - 1
        out["attempts"] += len(rec["attempts"])
        out["kept"] += len(rec["kept_seeds"])
    return out


def summary_line(counts: dict) -> str:
    return (f"quality gate: {counts['items']} item(s), {counts['passed']} passed, {counts['gate_failed']} gate_failed "
            f"(kept their best attempts), {counts['ungated']} without threshold; {counts['retried_items']} needed "
            f"retries ({counts['retry_rounds']} extra round(s)); {counts['attempts']} candidates generated, "
            f"{counts['kept']} kept")
