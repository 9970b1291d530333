"""Running the trainer in-process from tests: accelerate keeps global state between runs, so reset it around each."""
from __future__ import annotations


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def train_in_process(config):
    """``training.train.train(config)`` with accelerate's state fresh before and cleared after."""
    from salient_background.training.train import train

    reset_accelerate()
    try:
        return train(config)
    finally:
        reset_accelerate()
