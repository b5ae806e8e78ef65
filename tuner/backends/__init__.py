"""Search engines that drive a space's ``build(hp)`` and record every trial in the Optuna study."""

from __future__ import annotations

from tuner.backends._base import SearchBackend
from tuner.backends._base import SearchJob
from tuner.backends._base import get_backend

__all__ = ["SearchBackend", "SearchJob", "get_backend"]
