"""The errors a user can fix, at the bottom of the import graph: every package's input errors
(``SpaceError``, ``StoreError``, ``DataError``) subclass ``TunerError``, which the CLI prints as one
line with exit code 2 (``exit_code``)."""

from __future__ import annotations

# The project's distribution (what pip installs); its import packages and command are ``tuner``.
DISTRIBUTION = "keras-cnn-tuner"


def install_hint(extra: str) -> str:
    """``pip install`` of what the project's optional ``extra`` lists, the packages by name (so the
    command installs them wherever the project itself came from), from the installed metadata."""
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        required = [Requirement(line) for line in metadata.requires(DISTRIBUTION) or ()]
    except metadata.PackageNotFoundError:  # run from a checkout that was not installed
        return f"pip install -e '.[{extra}]'"
    packages = [r.name for r in required if r.marker and r.marker.evaluate({"extra": extra})]
    return f"pip install {' '.join(packages)}"


class TunerError(Exception):
    """Root of the errors caused by input: a bad argument, dataset, space or store."""

    exit_code = 2  # of the command that stops with it


# How long a search waits for an unreachable store by default (``--store-timeout``), in seconds, before
# ``StoreUnreachable``: a PostgreSQL restart takes seconds, a managed database's fail-over or
# maintenance a minute or two.
STORE_TIMEOUT = 300.0


class StoreUnreachable(TunerError):
    """The store stayed unreachable for longer than a search waits for it (``--store-timeout``): not
    the input's fault, and the same command run again once it is back goes on (exit code 3)."""

    exit_code = 3


class DataError(TunerError):
    """A dataset cannot be loaded or is not a usable image classification dataset."""


class WorkerFailed(Exception):
    """A worker process crashed (a bug or the system, not the input); the CLI exits with code 1."""
