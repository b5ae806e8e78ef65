"""Several worker processes on one study: ``--workers N``, or one per GPU with ``--gpus 0,1``.

Each worker is a fresh process (``spawn``) running the same search with its own sampler seed; they
share the study through the store, and the study's trial budget through ``StudyBudget``. A worker
given a GPU sees only that GPU (``CUDA_VISIBLE_DEVICES`` is set before any framework is imported).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

from tuner.errors import TunerError


def _worker(env: dict[str, str], request: dict[str, Any]) -> None:
    os.environ.update(env)
    from tuner._search import search

    search(**request)


def _wait_for_waiting_trials(study: Any, seconds: float) -> None:
    """Let the first worker take the study's enqueued trials before others start.

    On SQLite two workers popping the same enqueued trial at once can both run it (Optuna cannot
    lock the row there); one then fails to record it.
    """
    from optuna.trial import TrialState

    deadline = time.monotonic() + seconds
    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) and time.monotonic() < deadline:
        time.sleep(0.5)


def run_workers(request: dict[str, Any], study: Any, workers: int, gpus: Sequence[str] | None) -> None:
    """Run ``request`` (the keyword arguments of ``search``) in ``workers`` processes; wait for all."""
    context = multiprocessing.get_context("spawn")
    processes = []
    for i in range(workers):
        if i == 1:
            _wait_for_waiting_trials(study, seconds=120)
        env = {"CUDA_VISIBLE_DEVICES": str(gpus[i])} if gpus else {}
        # Different seeds, or every worker would propose the same parameters.
        job = {**request, "seed": request["seed"] + 1000 * i, "workers": 1, "gpus": None}
        process = context.Process(target=_worker, args=(env, job), name=f"tuner-worker-{i}")
        process.start()
        processes.append(process)
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        for process in processes:  # each records its trial in flight as failed, then exits
            if process.is_alive() and process.pid:
                os.kill(process.pid, signal.SIGINT)
        for process in processes:
            process.join()
        raise
    failed = [p.name for p in processes if p.exitcode]
    if failed:
        raise TunerError(f"{len(failed)} of {workers} workers failed ({', '.join(failed)}); their "
                         "errors are printed above, and their finished trials are in the study")
