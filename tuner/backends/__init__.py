"""Search engines that drive a space's ``build(hp)`` and record every trial in the Optuna study."""

from __future__ import annotations

from tuner._names import BACKENDS
from tuner.backends._base import SearchBackend
from tuner.backends._base import SearchJob
from tuner.errors import TunerError

__all__ = ["SearchBackend", "SearchJob", "get_backend"]


def get_backend(name: str) -> SearchBackend:
    """The backend called ``name`` (``BACKENDS``), its module imported only when asked for; an
    unknown name lists the valid ones."""
    if name == "optuna":
        from tuner.backends._optuna import OptunaBackend

        return OptunaBackend()
    if name == "keras-tuner":
        from tuner.backends._keras_tuner import KerasTunerBackend

        return KerasTunerBackend()
    raise TunerError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
