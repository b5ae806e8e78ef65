"""Errors a user can fix; the CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class TunerError(Exception):
    """Base of the errors caused by input: a bad argument, dataset or setting."""

    user_error = True


class DataError(TunerError):
    """A dataset cannot be loaded or is not a usable image classification dataset."""


class WorkerFailed(Exception):
    """A worker process crashed (a bug or the system, not the input); the CLI exits with code 1."""


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` means "the input was wrong" (as opposed to a bug) in any of our packages:
    a ``TunerError``, or an error whose class says ``user_error = True`` (``SpaceError``,
    ``StoreError``), so no package has to import another to be recognised."""
    return isinstance(err, TunerError) or getattr(type(err), "user_error", False) is True
