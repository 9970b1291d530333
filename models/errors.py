"""Errors meant for a person: each says what was wrong and how to fix it."""


class UserFacingError(Exception):
    """Base class for errors whose message is the whole story (no traceback needed)."""


class CheckpointError(UserFacingError, ValueError):
    """A weight file that is missing, unreadable or not the model it should be."""


class InputError(UserFacingError, ValueError):
    """An image or mask that cannot be used as given (sizes, batches, layouts)."""
