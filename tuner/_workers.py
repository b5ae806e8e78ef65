"""Several worker processes on one study: ``--workers N``, or one per GPU with ``--gpus 0,1``.

Each worker is a fresh process (``spawn``) running the same search with its own sampler seed; they
share the study through the store, and the study's trial budget through ``StudyBudget``. A worker
given a GPU sees only that GPU (``CUDA_VISIBLE_DEVICES`` is set before any framework is imported).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

from tuner.errors import TunerError
from tuner.errors import WorkerFailed
from tuner.errors import is_user_error


def _worker(env: dict[str, str], search: Callable[..., Any], request: dict[str, Any], verbosity: int) -> None:
    """A worker process: ``search(**request)`` (``tuner.search``, passed in by reference so that this
    module does not import the one that imports it)."""
    os.environ.update(env)
    import optuna

    from tuner._process import load_frameworks
    from tuner._process import quiet_interrupts
    from tuner._process import stop_on_sigterm

    stop_on_sigterm()
    _interrupt_once()
    quiet_interrupts()
    load_frameworks()  # quietly, as the parent did

    optuna.logging.set_verbosity(verbosity)  # as quiet as the parent
    try:
        search(**request)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:
        if not is_user_error(err):
            raise
        print(f"tuner: error: {err}", file=sys.stderr)  # one line, as the CLI prints it
        sys.exit(2)


def _interrupt_once() -> None:
    """The first SIGINT stops the worker's trial (which keeps its best epoch); later ones, such as
    the parent forwarding the terminal's Ctrl-C, are ignored so they cannot cut that wrap-up short."""

    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)


def run_workers(
    search: Callable[..., Any],
    request: dict[str, Any],
    workers: int,
    gpus: Sequence[str] | None,
    *,
    recycle_after: int | None = None,
    job: Any = None,
) -> None:
    """Run ``request`` (the keyword arguments of ``search``) in ``workers`` processes until the
    study's budget or timeout is spent; with ``recycle_after`` each process exits after that many
    trials and a fresh one takes its place.
    """
    deadline = request["deadline"]  # one moment for every worker: a time.time()
    request = {**request, "recycle_after": None, "process_trials": recycle_after, "record_settings": False}
    for round_number in itertools.count():
        before = job.finished_trials()
        if before >= request["trials"] or (deadline is not None and time.time() >= deadline):
            return
        # A new seed each round, or a seeded sampler would propose the last round's parameters again.
        seed = request["seed"] + 7919 * round_number
        _run_round(search, {**request, "seed": seed}, workers, gpus)
        if not recycle_after or job.finished_trials() == before:
            return  # one round does it all, or a round that finishes nothing would loop forever


def _run_round(search: Callable[..., Any], request: dict[str, Any], workers: int,
               gpus: Sequence[str] | None) -> None:
    """One process per worker, each running ``request``; waits for all of them."""
    import optuna

    context = multiprocessing.get_context("spawn")
    processes = []
    for i in range(workers):
        env = {"CUDA_VISIBLE_DEVICES": str(gpus[i])} if gpus else {}
        # Different seeds, or every worker would propose the same parameters.
        job = {**request, "seed": request["seed"] + 1000 * i, "workers": 1, "gpus": None,
               # One live view per terminal: several workers print plain lines.
               "progress": "lines" if workers > 1 and request["progress"] else request["progress"]}
        process = context.Process(target=_worker, args=(env, search, job, optuna.logging.get_verbosity()),
                                  name=f"tuner-worker-{i}")
        process.start()
        processes.append(process)
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        for process in processes:  # each stores its trial in flight (its best epoch), then exits
            if process.is_alive() and process.pid:
                os.kill(process.pid, signal.SIGINT)
        for process in processes:
            process.join()
        raise
    failed = [p for p in processes if p.exitcode]
    if failed:
        names = ", ".join(p.name for p in failed)
        message = (f"{len(failed)} of {workers} workers failed ({names}); their errors are printed "
                   "above, and their finished trials are in the study")
        # A worker exits 2 after an input mistake (its one line printed); anything else is a crash.
        raise (TunerError if all(p.exitcode == 2 for p in failed) else WorkerFailed)(message)
