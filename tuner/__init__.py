"""tuner: hyperparameter search for Keras CNN image classifiers, with every trial in an Optuna store.

>>> import tuner
>>> study = tuner.search("resnet", "digits", trials=3, epochs=2, study="demo")
>>> tuner.best_trial("demo")["test_accuracy"]

Heavy imports (Keras, TensorFlow) happen only when a function needs them, so reading a store is fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

from tuner.errors import DataError
from tuner.errors import StoreUnreachable
from tuner.errors import TunerError

if TYPE_CHECKING:  # what the lazy imports below give, for type checkers and editors
    from tuner._request import SearchRequest
    from tuner.data import load_dataset
    from tuner.driver._search import search
    from tuner.results._export import export
    from tuner.results._report import report
    from tuner.results._results import best_trial
    from tuner.results._results import list_studies
    from tuner.results._results import list_trials
    from tuner.results._results import param_importance

__all__ = [
    "DataError",
    "SearchRequest",
    "StoreUnreachable",
    "TunerError",
    "best_trial",
    "export",
    "list_studies",
    "list_trials",
    "load_dataset",
    "param_importance",
    "report",
    "search",
]

_LAZY = {
    "SearchRequest": "tuner._request",
    "search": "tuner.driver._search",
    "export": "tuner.results._export",
    "best_trial": "tuner.results._results",
    "list_studies": "tuner.results._results",
    "list_trials": "tuner.results._results",
    "load_dataset": "tuner.data",
    "param_importance": "tuner.results._results",
    "report": "tuner.results._report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tuner' has no attribute {name!r}")
