"""The error every part of the spaces raises for a request it cannot serve (the bottom module)."""

from __future__ import annotations

from tuner.errors import TunerError


class SpaceError(TunerError, ValueError):
    """A user asked for something a space cannot give: an unknown space or hyperparameter, a bad value."""
