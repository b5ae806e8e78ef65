"""The errors a user can fix, at the bottom of the import graph: every package's input errors
(``SpaceError``, ``StoreError``, ``DataError``) subclass ``TunerError``, which the CLI prints as one
line with exit code 2."""

from __future__ import annotations


class TunerError(Exception):
    """Root of the errors caused by input: a bad argument, dataset, space or store."""


class DataError(TunerError):
    """A dataset cannot be loaded or is not a usable image classification dataset."""


class WorkerFailed(Exception):
    """A worker process crashed (a bug or the system, not the input); the CLI exits with code 1."""
