"""Transitional: ``commands/generate.py`` still imports these two names from here while it moves to
:func:`models.generation.model_plan.plan_models`; the answers live in :mod:`models.bases` and
:mod:`models.generation.model_plan`. Remove this module once nothing imports it."""
from ..bases import base_of_model  # noqa: F401
from .model_plan import check_controlnet_fits  # noqa: F401
