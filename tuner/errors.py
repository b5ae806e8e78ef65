"""Errors a user can fix; the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import sys


class TunerError(Exception):
    """Base of the errors caused by input: a bad argument, dataset or setting."""


class DataError(TunerError):
    """A dataset cannot be loaded or is not a usable image classification dataset."""


class WorkerFailed(Exception):
    """A worker process crashed (a bug or the system, not the input); the CLI exits with code 1."""


# The user-error types of the sibling packages, by module, so checking for them imports nothing heavy.
_FOREIGN_USER_ERRORS = (("search_spaces._registry", "SpaceError"), ("storage._store", "StoreError"))


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` means "the input was wrong" (as opposed to a bug) in any of our packages.

    A type whose module was never imported cannot have been raised, so it is not imported here
    (importing ``search_spaces`` would pull in Keras and TensorFlow for nothing).
    """
    types: list[type[BaseException]] = [TunerError]
    for module, name in _FOREIGN_USER_ERRORS:
        if module in sys.modules:
            types.append(getattr(sys.modules[module], name))
    return isinstance(err, tuple(types))
