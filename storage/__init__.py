"""The trial store: Optuna's own RDB storage, opened from a SQLAlchemy URL, with tuner's study metadata.

Every study lives in Optuna's schema, so ``optuna-dashboard sqlite:///tuner.db`` and the ``optuna``
CLI read it unchanged. What tuner adds is kept in Optuna's study and trial user attributes.
"""

from __future__ import annotations

from storage._artifacts import artifacts_location
from storage._artifacts import artifacts_path
from storage._artifacts import cache_path
from storage._artifacts import keras_tuner_path
from storage._artifacts import object_store
from storage._artifacts import open_artifact_store
from storage._lock import exclusive
from storage._owners import fail_orphaned_trials
from storage._owners import record_owner
from storage._resilient import StoreAway
from storage._resilient import gave_up
from storage._resilient import while_training
from storage._store import DEFAULT_STORAGE
from storage._store import STORAGE_ENV
from storage._store import StoreError
from storage._store import StudyMismatchError
from storage._store import open_storage
from storage._store import open_study
from storage._store import storage_url
from storage._store import study_names
from storage._store import unreachable

__all__ = [
    "artifacts_location",
    "artifacts_path",
    "cache_path",
    "keras_tuner_path",
    "object_store",
    "open_artifact_store",
    "exclusive",
    "fail_orphaned_trials",
    "record_owner",
    "StoreAway",
    "gave_up",
    "while_training",
    "DEFAULT_STORAGE",
    "STORAGE_ENV",
    "StoreError",
    "StudyMismatchError",
    "open_storage",
    "open_study",
    "storage_url",
    "study_names",
    "unreachable",
]
