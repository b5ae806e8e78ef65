"""What every tuner process (the CLI and its workers) sets up: a quiet start-up and SIGTERM as Ctrl-C.

TensorFlow, XLA, absl and CUDA write start-up lines straight to file descriptor 2 while they load
("oneDNN custom operations are on", "failed call to cuInit" on a machine without a GPU, absl's
"All log messages before absl::InitializeLog()"), which ``TF_CPP_MIN_LOG_LEVEL`` does not all
silence. ``load_frameworks`` imports the frameworks and finds the devices with descriptor 2 sent to
a temporary file, then writes back whatever is not such chatter. The library never does this: a
caller's own logging is theirs. ``--verbose`` or ``TUNER_VERBOSE=1`` shows everything.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

VERBOSE_ENV = "TUNER_VERBOSE"
FAILED_WITH_NONE = re.compile(r"Trial \d+ failed with value None\.")
# Start-up lines of the frameworks: absl/glog-formatted log lines ("E0000 00:00:17... file.cc:52] ..."),
# absl's notice before its logging starts, and TensorFlow's build and plug-in notices.
CHATTER = re.compile(
    r"^[IWEF]\d{4} \d\d:\d\d:\d\d"
    r"|^WARNING: All log messages before absl::InitializeLog\(\)"
    r"|oneDNN custom operations are on"
    r"|This TensorFlow binary is optimized"
    r"|To enable the following instructions"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    r"|TF-TRT Warning"
    r"|Could not find cuda drivers"
)


def verbose() -> bool:
    """Whether the frameworks' own start-up output is wanted (``TUNER_VERBOSE`` set and not 0)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def without_chatter(text: str) -> str:
    """``text`` less the frameworks' start-up lines."""
    return "".join(line for line in text.splitlines(keepends=True) if not CHATTER.search(line))


@contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Send what anything in this process writes to descriptor 2 to a temporary file; on exit,
    write back the lines that are not start-up chatter."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = without_chatter(captured.read().decode(errors="replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def load_frameworks() -> str:
    """Import Keras, its backend and Keras Tuner, and find the accelerator, quietly unless
    ``verbose()``; returns ``"gpu"`` or ``"cpu"``. Later imports are then silent: loaded once."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def load() -> str:
        import keras  # noqa: F401 - loads the backend
        import keras_tuner  # noqa: F401 - the spaces are its HyperModels

        from tuner._device import accelerator

        return accelerator()

    if verbose():
        return load()
    with native_stderr_filtered():
        return load()


class _NoInterruptedTrials(logging.Filter):
    """Drops Optuna's "Trial N failed ... KeyboardInterrupt()" warning and its traceback (after
    Ctrl-C or SIGTERM the CLI's own line says what happened to the trial in flight), and the
    "Trial N failed with value None." that follows every failure (the progress line says it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        return not (isinstance(error, KeyboardInterrupt) or "KeyboardInterrupt()" in message
                    or FAILED_WITH_NONE.fullmatch(message))


def quiet_interrupts() -> None:
    """Ctrl-C and SIGTERM end with tuner's own lines only (see ``_NoInterruptedTrials``); on the
    handler Optuna gives its loggers, since a logger's own filter misses its children's records."""
    import optuna

    optuna.logging.get_verbosity()  # sets up Optuna's handler
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _NoInterruptedTrials) for f in handler.filters):
            handler.addFilter(_NoInterruptedTrials())


def stop_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a job scheduler's stop) stop a search as Ctrl-C does: the trial in
    flight keeps its best epoch (or is recorded as failed before its first), is never left RUNNING,
    and the process exits with 130."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():  # the only thread that may set one
        signal.signal(signal.SIGTERM, interrupt)
