"""The soak's memory figures (tests/sb_testkit/comfy_soak.py) on made-up RSS series: a model loaded and dropped, or a
probe's malloc_trim, moves RSS in steps that are not growth; a peak that keeps rising, or memory in use that climbs
across loads, is."""
from __future__ import annotations

import pytest

from sb_testkit.comfy_soak import Outcome, SoakReport

MB = 2 ** 20
SMALL, BIG = "InSPyReNet,Sam", "BaseModel,InSPyReNet,Sam"


def _report(series) -> SoakReport:
    """``series``: (models held, RSS MB, in-use MB or None) per prompt."""
    outcomes = []
    for index, (loaded, rss, in_use) in enumerate(series):
        o = Outcome(index, "k", "ok", "ok", 1.0, int(rss * MB), loaded=loaded)
        o.rss_in_use = None if in_use is None else int(in_use * MB)
        outcomes.append(o)
    return SoakReport(outcomes, warmup=0, seconds=1.0, queue_at_end=(0, 0), probes=[{"cache_module_found": True}], stopped_early=False)


def _cycles(cycles: int, small_level, big_mb: float, leak_per_prompt: float = 0.0, in_use_step: float = 0.0):
    """Runs of 8 prompts holding the small set then 4 holding the big one; ``small_level(cycle)`` is the small set's
    RSS in that cycle (the allocator keeping freed memory), ``leak_per_prompt`` MB added at every prompt."""
    series, index = [], 0
    for cycle in range(cycles):
        for _ in range(8):
            rss = small_level(cycle) + leak_per_prompt * index
            in_use = 1000 + in_use_step * cycle if index % 5 == 0 else None
            series.append((SMALL, rss, in_use))
            index += 1
        for _ in range(4):
            series.append((BIG, big_mb + leak_per_prompt * index, None))
            index += 1
    return series


def test_steps_between_loads_are_not_growth():
    # the allocator keeps 300 MB more after each of the first three drops of the big model, then stays there
    report = _report(_cycles(10, lambda c: 1000 + 300 * min(c, 3), 3000))
    assert report.raw_growth_per_100()[SMALL] > 500  # what a fit across the loads reports
    assert report.rss_growth_per_100()[SMALL] == pytest.approx(0.0, abs=1e-6)
    assert report.in_use_growth_per_100()[SMALL] == pytest.approx(0.0, abs=1e-6)
    assert report.failures(50.0) == []


def test_a_probe_trim_is_a_step_down_not_growth():
    # RSS 5000 MB until the probe after prompt 9 hands 3600 MB back to the system, then 1400 MB
    series = [(SMALL, 5000.0 if i <= 9 else 1400.0, 1400.0 if i == 9 else None) for i in range(30)]
    report = _report(series)
    assert report.rss_growth_per_100()[SMALL] < 0 and report.failures(50.0) == []


def test_a_working_set_that_climbs_back_after_each_trim_is_not_growth():
    # after each probe's trim RSS falls to 1400 MB, then climbs back to a 1600 MB plateau over 3 prompts
    series = []
    for i in range(100):
        since_trim = i % 25
        series.append((SMALL, min(1400.0 + 70 * since_trim, 1600.0), 1400.0 if since_trim == 24 else None))
    assert _report(series).rss_growth_per_100()[SMALL] == pytest.approx(0.0, abs=1e-6)


def test_growth_within_runs_is_caught():
    report = _report(_cycles(6, lambda c: 1000, 3000, leak_per_prompt=1.0))  # 1 MB per prompt: 100 MB per 100
    assert report.rss_growth_per_100()[SMALL] == pytest.approx(100.0, rel=0.05)
    assert any("RSS peak grows" in f and "[InSPyReNet,Sam]" in f for f in report.failures(50.0))


def test_memory_in_use_that_climbs_across_loads_is_caught():
    # nothing grows within a run, but each load leaves 24 MB in use: 200 MB per 100 prompts (12 prompts a cycle)
    report = _report(_cycles(10, lambda c: 1000, 3000, in_use_step=24))  # RSS itself held up by the allocator
    assert report.rss_growth_per_100()[SMALL] == pytest.approx(0.0, abs=1e-6)
    assert report.in_use_growth_per_100()[SMALL] == pytest.approx(200.0, rel=0.05)  # sampled at the probes only
    assert any("memory in use grows" in f and "[InSPyReNet,Sam]" in f for f in report.failures(50.0))


def test_a_model_held_twice_is_told_apart_from_two_files_held_once():
    from sb_testkit.comfy_soak import model_copy_problems

    probe = {"cache_module_found": True, "model_caches": {"salient": [["/m/a.pth"], ["/m/b.pth"]], "sam": [["/m/s.pth"]]},
             "live_modules": {"InSPyReNet": 2, "Sam": 1}}
    assert model_copy_problems(probe) == []  # two salient files (another test's and the soak's), each once
    probe["live_modules"]["Sam"] = 2
    assert model_copy_problems(probe) == ["2 live Sam objects (at most 1 expected)"]  # one file, two copies
