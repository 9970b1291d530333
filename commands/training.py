"""``python -m salient_background training <prepare|train|export>``: the training subpackage's commands.

The implementation is :mod:`salient_background.training.cli` (also ``python -m salient_background.training``).
"""
from __future__ import annotations


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "training",
        help="train the salient ControlNet: prepare data, train (accelerate), export for the loader node",
        description="Dataset preparation, the ControlNet trainer and export (same as python -m salient_background.training).",
    )
    sub = parser.add_subparsers(dest="training_command", metavar="<prepare|train|export>")
    sub.required = True
    from ..training.cli import add_commands

    add_commands(sub)
