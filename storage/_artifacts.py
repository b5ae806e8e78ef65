"""Where trial files (model weights) live: an Optuna artifact store, a folder beside the database by
default, or a bucket of object storage (``s3://bucket/prefix``, ``gs://bucket/prefix``) that every
machine of a cluster reaches."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any
from typing import BinaryIO
from urllib.parse import urlsplit

from optuna.artifacts import FileSystemArtifactStore

from storage._store import StoreError
from storage._store import sqlite_path
from storage._store import storage_url
from tuner.errors import install_hint

# Object storage by URL scheme: the Python module Optuna's store needs, and the extra that brings it.
OBJECT_STORES = {"s3": ("boto3", "s3"), "gs": ("google.cloud.storage", "gcs")}


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


def object_store(artifacts: str | None) -> tuple[str, str, str] | None:
    """``(scheme, bucket, prefix)`` of an object-storage location (``s3://bucket/prefix``), None for a
    folder; a clear error for one without a bucket or whose client library is not installed."""
    scheme = urlsplit(artifacts or "").scheme
    if scheme not in OBJECT_STORES:
        return None
    parts = urlsplit(str(artifacts))
    if not parts.netloc:
        raise StoreError(f"--artifacts {artifacts} names no bucket: {scheme}://BUCKET/PREFIX")
    module, extra = OBJECT_STORES[scheme]
    if importlib.util.find_spec(module.partition(".")[0]) is None or importlib.util.find_spec(module) is None:
        raise StoreError(f"--artifacts {scheme}:// needs {module}, which is not installed: {install_hint(extra)}")
    return scheme, parts.netloc, parts.path.strip("/")


class PrefixedStore:
    """An Optuna artifact store whose artifacts live under ``prefix/`` of ``store`` (Optuna's bucket
    stores write at the bucket's root): one bucket serves several searches."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.store, self.prefix = store, f"{prefix}/" if prefix else ""

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.store.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.store.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self.prefix + artifact_id)


def open_artifact_store(url: str | None, artifacts: str | None, *, create: bool) -> Any:
    """The artifact store of the study store at ``url``: the bucket ``artifacts`` names (Optuna's
    ``Boto3ArtifactStore``, configured as boto3 is: ``AWS_*`` variables, ``~/.aws``; or
    ``GCSArtifactStore``, with Google's default credentials), or Optuna's filesystem store in the
    folder ``artifacts_path`` gives (made if ``create``)."""
    found = object_store(artifacts)
    if found:
        scheme, bucket, prefix = found
        if scheme == "s3":
            from optuna.artifacts import Boto3ArtifactStore

            return PrefixedStore(Boto3ArtifactStore(bucket), prefix)
        from optuna.artifacts import GCSArtifactStore

        return PrefixedStore(GCSArtifactStore(bucket), prefix)
    path = artifacts_path(url, artifacts)
    if path.exists() and not path.is_dir():
        raise StoreError(f"artifact folder {path} is a file")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create the artifact folder {path}: {err}") from None
    return FileSystemArtifactStore(path)


def artifacts_location(url: str | None, artifacts: str | None) -> str:
    """Where the models are, for people: the bucket URL, or the folder."""
    return str(artifacts).rstrip("/") if object_store(artifacts) else str(artifacts_path(url, artifacts))
