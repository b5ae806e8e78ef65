"""What every tuner process (the CLI and its workers) sets up: a quiet start-up, and Ctrl-C and SIGTERM
that stop a search between training steps.

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
import signal
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
    """Import Keras, its backend, Keras Tuner (and TensorFlow), and find the accelerator, quietly unless
    ``verbose()``; returns ``"gpu"`` or ``"cpu"``. Later imports are then silent: loaded once."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def load() -> str:
        import importlib.util

        import keras  # noqa: F401 - loads the backend
        import keras_tuner  # noqa: F401 - the spaces are its HyperModels

        if importlib.util.find_spec("tensorflow") is not None:
            # On every backend Keras's set_random_seed (each trial's start) seeds TensorFlow too where
            # it is installed, importing it: here, so its start-up lines are filtered as well.
            import tensorflow  # noqa: F401

        from tuner.training._device import accelerator

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


class _Signals:
    """What Ctrl-C and SIGTERM have done in this process (``stop_on_signals``, ``interrupts_held``)."""

    received = 0  # signals so far
    repeats_ignored = False  # a worker: after the first, none can cut its trial's wrap-up short
    holding = False  # a trial is training: a first signal waits for the step in flight to end
    pending = False  # a signal not yet raised where tuner's own code runs


def _interrupt(signum: int, frame: Any) -> None:
    """The handler of Ctrl-C and SIGTERM: ``KeyboardInterrupt`` now, or, inside ``interrupts_held``,
    when the training step ends (a second signal does not wait)."""
    _Signals.received += 1
    if _Signals.repeats_ignored and _Signals.received > 1:
        return
    if _Signals.holding and not _Signals.pending:
        _Signals.pending = True
        return
    # Pending as well: raised inside a finaliser (a weakref callback during garbage collection) the
    # interrupt is printed as "Exception ignored" and lost; the next trial's training raises it.
    _Signals.pending = True
    raise KeyboardInterrupt


def stop_on_signals(*, ignore_repeats: bool = False) -> None:
    """Make Ctrl-C and SIGTERM (``kill``, a job scheduler's stop) stop a search: the trial in flight
    keeps its best epoch (or is recorded as failed before its first), is never left RUNNING, and the
    process exits with 130. ``ignore_repeats``: only the first signal counts (a worker process, whose
    parent forwards the terminal's Ctrl-C to it as well)."""
    if threading.current_thread() is threading.main_thread():  # the only thread that may set one
        _Signals.repeats_ignored = ignore_repeats
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, _interrupt)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C (and SIGTERM, after ``stop_on_signals``) while a trial trains, until
    ``raise_held_interrupt`` (called between training steps) or ``take_held_interrupt`` handles it;
    one still held at the end is raised then, and one that was lost earlier is raised on entry.

    Python raises ``KeyboardInterrupt`` at whatever line runs when the signal lands, and in a trial
    that is mostly framework code: raised inside TensorFlow's tracing, while its C++ was building an
    exception of its own, it came back as a ``RuntimeError`` ("MISMATCH of original and normalized
    active exception types") that failed the trial, and the search went on.
    Only in the main thread, and Ctrl-C only where it has Python's default handler or tuner's."""
    if _Signals.holding or threading.current_thread() is not threading.main_thread():
        yield
        return
    raise_held_interrupt()
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)
    _Signals.holding = True
    try:
        yield
    finally:
        _Signals.holding = False
        if previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous)
        raise_held_interrupt()


def take_held_interrupt() -> bool:
    """Whether a Ctrl-C or SIGTERM is held; it is handled (no longer held) once this says so."""
    pending, _Signals.pending = _Signals.pending, False
    return pending


def raise_held_interrupt() -> None:
    """Raise the held Ctrl-C or SIGTERM as ``KeyboardInterrupt``, if there is one."""
    if take_held_interrupt():
        raise KeyboardInterrupt
