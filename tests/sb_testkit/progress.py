"""A stand-in for tqdm's bar that records what a run's progress bar was given and counted."""
from __future__ import annotations

from typing import Optional


def recording_bar_class(bars: list, events: Optional[list] = None) -> type:
    """A tqdm-like class; each bar it makes is appended to ``bars`` (``planned``: the total it was made with), and
    ``("bar", total, initial)`` / ``("closed", n)`` go to ``events`` when given. A count past the total fails."""

    class RecordingBar:
        def __init__(self, total=None, initial=0, **kwargs):
            self.total = self.planned = total
            self.n = initial
            bars.append(self)
            if events is not None:
                events.append(("bar", total, initial))

        def refresh(self):
            pass

        def update(self, k=1):
            self.n += k
            assert self.total is None or self.n <= self.total, f"the bar counted {self.n} of {self.total}"

        def close(self):
            if events is not None:
                events.append(("closed", self.n))

    return RecordingBar


def record_bars(monkeypatch, events: Optional[list] = None) -> list:
    """Replace ``tqdm.auto.tqdm`` (the run's bar) with a recording one; returns the list of bars made."""
    import tqdm.auto

    bars: list = []
    monkeypatch.setattr(tqdm.auto, "tqdm", recording_bar_class(bars, events))
    return bars
