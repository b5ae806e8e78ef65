"""The error every part of the spaces raises for a request it cannot serve (the bottom module)."""

from __future__ import annotations


class SpaceError(ValueError):
    """A user asked for something a space cannot give: an unknown space or hyperparameter, a bad value."""

    user_error = True  # a CLI reports it in one line (tuner.errors.is_user_error)
