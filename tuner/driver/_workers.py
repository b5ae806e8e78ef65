"""Several worker processes on one study: ``--workers N``, or one per GPU with ``--gpus 0,1``.

Each worker is a fresh process (``spawn``) given the same checked request and its own sampler seed; they
share the study through the store, and the study's trial budget through ``StudyBudget``. A worker
given a GPU sees only that GPU (``CUDA_VISIBLE_DEVICES`` is set before any framework is imported).
"""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
from collections.abc import Callable
from typing import Any

from tuner.errors import StoreUnreachable
from tuner.errors import TunerError
from tuner.errors import WorkerFailed

# Times per worker a killed worker process is replaced in one round, and the seed offset of a replacement.
MAX_REPLACED = 3
REPLACEMENT_SEED = 104_729


def run_call(env: dict[str, str], call: bytes, verbosity: int, workdir: str | None = None) -> int:
    """A worker's life: ``work(*args)``, pickled in ``call``, in a fresh process (``_worker``, or a
    Ray task), in the search's own folder ``workdir`` where this machine has it (a relative store or
    dataset path means what it meant there); returns its exit code. ``work`` is
    ``tuner.driver._search.run_in_worker``, passed in by reference so that this module does not import
    the one that imports it; it is unpickled only after ``load_frameworks``, since unpickling imports
    its module, and with it Keras."""
    os.environ.update(env)
    if workdir and os.path.isdir(workdir):
        os.chdir(workdir)
    import optuna

    from tuner.training._process import load_frameworks
    from tuner.training._process import quiet_interrupts
    from tuner.training._process import stop_on_signals

    stop_on_signals(ignore_repeats=True)  # repeats: the parent forwards the terminal's Ctrl-C too
    quiet_interrupts()
    load_frameworks()  # quietly, as the parent did

    optuna.logging.set_verbosity(verbosity)  # as quiet as the parent
    work, args = pickle.loads(call)
    try:
        work(*args)
    except KeyboardInterrupt:
        return 130
    except StoreUnreachable:
        return StoreUnreachable.exit_code  # the search's process says it, once
    except TunerError as err:
        print(f"tuner: error: {err}", file=sys.stderr)  # one line, as the CLI prints it
        return err.exit_code
    return 0


def _worker(env: dict[str, str], call: bytes, verbosity: int) -> None:
    """A worker process (``spawn``): ``run_call``, its code the process's exit code."""
    sys.exit(run_call(env, call, verbosity))


def run_workers(work: Callable[..., None], request: Any, spent: Callable[[], bool],
                stored_trials: Callable[[], int],
                run_round: Callable[[Callable[..., None], Any, int, Callable[[], bool]], None] | None = None) -> None:
    """Run ``request`` (a checked ``SearchRequest``) in ``request.workers`` processes, each calling
    ``work(request, seed, process_trials, lines)``, until ``spent()`` says the search is over (its
    budget, its deadline or its final trial); with ``request.recycle_after`` each process exits after
    that many trials and a fresh one takes its place. ``stored_trials`` counts the study's trials in
    any state (a round that stored none would loop forever). ``run_round`` runs one round of workers
    (default: local processes, ``_run_round``; ``tuner.driver._ray.run_ray_round``: Ray tasks).
    """
    run_round = run_round or _run_round
    for round_number in itertools.count():
        before = stored_trials()
        if spent():
            return
        # A new seed each round, or a seeded sampler would propose the last round's parameters again.
        run_round(work, request, request.seed + 7919 * round_number, spent)
        if not request.recycle_after or stored_trials() == before:
            return


def worker_call(work: Callable[..., None], request: Any, seed: int, i: int, generation: int = 0) -> bytes:
    """What worker ``i`` of a round runs (``run_call``), pickled: ``work`` with its own sampler seed,
    or every worker would propose the same parameters (a replacement, ``generation`` > 0, another one
    again); several workers print plain lines (one live view per terminal)."""
    args = (request, seed + 1000 * i + REPLACEMENT_SEED * generation, request.recycle_after, request.workers > 1)
    return pickle.dumps((work, args))


def _run_round(work: Callable[..., None], request: Any, seed: int, spent: Callable[[], bool]) -> None:
    """One process per worker, each with its own sampler seed; waits for all of them. A worker killed
    by a signal (kill -9, the out-of-memory killer, a preempted job) is replaced by a fresh one while
    the search has work left, up to ``MAX_REPLACED`` times per worker; its trial in flight is failed
    and retried by the owner rule (``storage.fail_orphaned_trials``)."""
    import optuna

    context = multiprocessing.get_context("spawn")
    workers, gpus = request.workers, request.gpus
    verbosity = optuna.logging.get_verbosity()

    def start(i: int, generation: int) -> multiprocessing.process.BaseProcess:
        env = {"CUDA_VISIBLE_DEVICES": str(gpus[i])} if gpus else {}
        call = worker_call(work, request, seed, i, generation)
        process = context.Process(target=_worker, args=(env, call, verbosity), name=f"tuner-worker-{i}")
        process.start()
        return process

    running = {i: start(i, 0) for i in range(workers)}
    ended, replaced = [], [0] * workers
    try:
        while running:
            multiprocessing.connection.wait([p.sentinel for p in running.values()])
            for i, process in list(running.items()):
                if process.is_alive():
                    continue
                process.join()
                del running[i]
                if process.exitcode is not None and process.exitcode < 0 and replaced[i] < MAX_REPLACED \
                        and not spent():
                    replaced[i] += 1
                    print(f"tuner: worker {i} was killed (signal {-process.exitcode}); a fresh one takes its place",
                          file=sys.stderr, flush=True)
                    running[i] = start(i, replaced[i])
                else:
                    ended.append(process)
    except BaseException:  # Ctrl-C, or the store gone for this process too
        for process in running.values():  # each stores its trial in flight (its best epoch), then exits
            if process.is_alive() and process.pid:
                os.kill(process.pid, signal.SIGINT)
        for process in running.values():
            process.join()
        raise
    check_exits({p.name: p.exitcode or 0 for p in ended})


def check_exits(codes: dict[str, int]) -> None:
    """Raise for the workers (by name) that exited with an error code: a ``TunerError`` where each
    exited 2 after an input mistake, ``StoreUnreachable`` where one gave up waiting for the store
    (its one line printed), ``WorkerFailed`` for anything else (a crash)."""
    failed = sorted(name for name, code in codes.items() if code)
    if not failed:
        return
    message = (f"{len(failed)} of {len(codes)} workers failed ({', '.join(failed)}); their errors are printed "
               "above, and their finished trials are in the study")
    if any(codes[name] == StoreUnreachable.exit_code for name in failed):
        raise StoreUnreachable(message)
    raise (TunerError if all(codes[name] == TunerError.exit_code for name in failed) else WorkerFailed)(message)
