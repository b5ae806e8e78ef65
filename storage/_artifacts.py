"""Where trial files (model weights) live: an Optuna filesystem artifact store beside the database."""

from __future__ import annotations

from pathlib import Path

from optuna.artifacts import FileSystemArtifactStore

from storage._store import StoreError
from storage._store import sqlite_path
from storage._store import storage_url

ARTIFACTS_ENV = "TUNER_ARTIFACTS"


def artifacts_path(url: str | None = None, artifacts: str | None = None) -> Path:
    """``artifacts`` if given, else ``<db name>-artifacts/`` beside a SQLite file, else ``./tuner-artifacts``.

    A cluster on PostgreSQL needs a folder every machine sees: pass ``--artifacts`` on each.
    """
    if artifacts:
        return Path(artifacts).expanduser()
    path = sqlite_path(storage_url(url))
    if path is not None:
        return path.with_name(f"{path.stem}-artifacts")
    return Path("tuner-artifacts")


def cache_path(url: str | None = None) -> Path:
    """Decoded image files (``tuner/data/_images.py``): ``<db name>-cache/`` beside a SQLite file, else
    ``./tuner-cache``."""
    path = sqlite_path(storage_url(url))
    if path is not None:
        return path.with_name(f"{path.stem}-cache")
    return Path("tuner-cache")


def keras_tuner_path(url: str | None = None) -> Path:
    """Keras Tuner's working folders (one per study): ``<db name>-keras-tuner/`` beside a SQLite file,
    else ``./tuner-keras-tuner``."""
    path = sqlite_path(storage_url(url))
    if path is not None:
        return path.with_name(f"{path.stem}-keras-tuner")
    return Path("tuner-keras-tuner")


def open_artifact_store(path: Path, *, create: bool) -> FileSystemArtifactStore:
    """Optuna's filesystem artifact store at ``path`` (made if ``create``)."""
    if path.exists() and not path.is_dir():
        raise StoreError(f"artifact folder {path} is a file")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create the artifact folder {path}: {err}") from None
    return FileSystemArtifactStore(path)
