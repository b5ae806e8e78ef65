"""A search's workers as Ray tasks: ``tuner search --ray [ADDRESS]``, ``tuner.search(..., ray=...)``.

Each worker of a round is a Ray task that runs what a local worker process runs (``run_call``): the
same trial runner on the same study in the same store, with the same sampler seeds and the same
deadline. The study is the only coordination, so a Ray search and a plain ``tuner search`` can work
on one study together. Ray places the tasks: ``--gpus-per-trial`` reserves that many of a GPU for
each (a fraction packs several trials on one GPU, whose memory TensorFlow and JAX then take as they
need it rather than all at once), and Ray gives each task its GPU in ``CUDA_VISIBLE_DEVICES``. Each
task has a fresh process (the memory a framework keeps goes with it); one whose process or node died
is run again by Ray, ``MAX_REPLACED`` times at most, and its trial in flight is failed and retried by
the owner and heartbeat rules (``storage``). Ctrl-C cancels the tasks, which raises
``KeyboardInterrupt`` in each: it stores its trial in flight, as a local worker does after SIGINT.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

from tuner.driver._workers import MAX_REPLACED
from tuner.driver._workers import check_exits
from tuner.driver._workers import run_call
from tuner.driver._workers import worker_call
from tuner.errors import TunerError
from tuner.errors import install_hint

# ``--ray`` without an address: a Ray runtime of this machine's own, started for the search and
# ended after it (or the one that ``ray.init`` finds: ``RAY_ADDRESS``, a ``ray start`` here).
LOCAL = "local"
# What a worker on another node needs of this process's environment to run the search as asked.
PASSED_ON = ("KERAS_BACKEND", "TUNER_STORAGE")
# A worker that shares its GPU: frameworks take GPU memory as they need it, not all at the start.
SHARED_GPU = {"TF_FORCE_GPU_ALLOW_GROWTH": "true", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def ray_module() -> Any:
    """The ``ray`` package, or one line naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise TunerError(f"--ray needs Ray, which is not installed: {install_hint('ray')}") from None
    return ray


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[Any]:
    """Ray, connected (None: no Ray, for a search without ``--ray``): the caller's own session where
    one is open (left open after), otherwise the cluster at ``address`` (``auto``: the one running
    here; ``LOCAL``: what ``ray.init`` finds or starts), disconnected after. A cluster that cannot be
    reached is one line (``TunerError``)."""
    if address is None:
        yield None
        return
    ray = ray_module()
    if ray.is_initialized():
        yield ray
        return
    try:
        ray.init(address=None if address == LOCAL else address, include_dashboard=False, log_to_driver=True,
                 configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TunerError(f"--ray {address}: cannot reach the Ray cluster ({first})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def worker_env(gpus_per_trial: float | None) -> dict[str, str]:
    """The environment a worker task sets before it imports a framework: what this process was given
    (``PASSED_ON``), and, for a worker given part of a GPU, memory growth (``SHARED_GPU``)."""
    env = {name: os.environ[name] for name in PASSED_ON if name in os.environ}
    if gpus_per_trial and gpus_per_trial < 1:
        env.update(SHARED_GPU)
    return env


def run_ray_round(work: Callable[..., None], request: Any, seed: int, spent: Callable[[], bool]) -> None:
    """One Ray task per worker (``request.workers``), each ``run_call`` with its own sampler seed and
    ``request.gpus_per_trial`` of a GPU (default: one where the cluster has GPUs); waits for all of
    them, and raises as a round of local workers does for those that failed (``check_exits``). A task
    whose process died is run again by Ray; after ``MAX_REPLACED`` times it counts as a crash. Ctrl-C
    (or any error here) cancels them: each stores its trial in flight, and the round waits for that."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    with connected(request.ray) as ray:
        gpus = request.gpus_per_trial
        if gpus is None:  # a whole GPU each where the cluster has any
            gpus = 1.0 if ray.cluster_resources().get("GPU") else 0.0
        env = worker_env(gpus)
        task = ray.remote(num_gpus=gpus, max_calls=1, max_retries=MAX_REPLACED, retry_exceptions=False)(run_call)
        refs = {f"tuner-worker-{i}": task.options(name=f"tuner-worker-{i}").remote(
            env, worker_call(work, request, seed, i), verbosity, os.getcwd()) for i in range(request.workers)}
        try:
            codes = {name: exit_code(ray, ref) for name, ref in refs.items()}
        except BaseException:
            for ref in refs.values():
                ray.cancel(ref)
            ray.wait(list(refs.values()), num_returns=len(refs))
            raise
    check_exits(codes)


def exit_code(ray: Any, ref: Any) -> int:
    """A worker task's exit code (``run_call``'s); -1 for one whose process or node died once more
    than Ray runs it again, or that raised (its traceback is in Ray's log, printed here)."""
    try:
        return int(ray.get(ref))
    except ray.exceptions.RayError:
        return -1
