"""A search's workers as Ray tasks (``--ray``), on a Ray runtime of this machine that declares GPUs
it does not have: Ray places the workers and tells each its GPU; the study is their only link."""

from __future__ import annotations

import collections

import pytest
from conftest import TINY
from conftest import watch_trials

import tuner

ray = pytest.importorskip("ray", reason="the ray extra (CI installs it)")


@pytest.fixture
def ray_runtime():
    """A local Ray runtime with 4 CPUs and 2 GPUs, logical only: placement works as on a GPU box."""
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def overlapping(trials) -> int:
    """The most trials that ran at one time."""
    events = sorted([(t.datetime_start, 1) for t in trials] + [(t.datetime_complete, -1) for t in trials],
                    key=lambda event: (event[0], event[1]))
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


@pytest.mark.slow
def test_half_a_gpu_per_trial_runs_four_workers_on_two_gpus_into_one_study(ray_runtime, postgres_url,
                                                                          unique_name):
    study = tuner.search("resnet", "digits", trials=4, epochs=2, workers=4, ray="local", gpus_per_trial=0.5,
                         storage=postgres_url, study=unique_name, overrides=TINY["resnet"], keep=0, pruner="none")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4  # each trial once, none lost
    owners = [t.user_attrs["owner"] for t in study.trials]
    assert {owner["gpus"] for owner in owners} <= {"0", "1"}  # one GPU each, Ray's choice
    assert overlapping(study.trials) > 2  # more at once than whole GPUs would allow
    for gpu in {owner["gpus"] for owner in owners}:  # two trials at most share a GPU at any time
        assert overlapping([t for t, o in zip(study.trials, owners, strict=True) if o["gpus"] == gpu]) <= 2
    assert len({(o["host"], o["pid"]) for o in owners}) >= 3  # separate worker processes
    assert ray.is_initialized()  # the caller's own Ray session, left open



@pytest.mark.slow
def test_a_node_lost_mid_trial_leaves_its_trial_failed_and_retried_and_the_study_complete(postgres_url,
                                                                                          unique_name):
    """Two nodes of one worker each (on this machine: ``ray.cluster_utils.Cluster``); one is killed
    while it trains. Its trial ends FAIL (its process is gone) and is run again, Ray runs its task
    again, and the study still reaches its trials, with nothing left RUNNING."""
    import threading

    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 10**8})
    nodes = [cluster.add_node(num_cpus=1, object_store_memory=10**8) for _ in range(2)]
    killed: list[int] = []

    def kill_a_node_mid_trial() -> None:
        # An epoch in: the trial's process is surely on a worker node.
        if watch_trials(postgres_url, unique_name,
                        lambda trials: any(t.state.name == "RUNNING" and t.intermediate_values for t in trials)):
            cluster.remove_node(nodes[0], allow_graceful=False)
            killed.append(True)

    ray.init(address=cluster.address, configure_logging=False)
    try:
        killer = threading.Thread(target=kill_a_node_mid_trial)
        killer.start()
        study = tuner.search("resnet", "digits", trials=4, epochs=3, workers=2, ray="auto",
                             storage=postgres_url, study=unique_name, overrides=TINY["resnet"], keep=0,
                             pruner="none")
        killer.join()
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert killed, "no trial ran long enough to be cut"
    states = collections.Counter(t.state.name for t in study.trials)
    assert states["COMPLETE"] == 4 and "RUNNING" not in states
    (lost,) = [t for t in study.trials if t.state.name == "FAIL"]  # the trial on the lost node
    assert any(t.params == lost.params and t.state.name == "COMPLETE" for t in study.trials)  # retried
    finished_by = {t.user_attrs["owner"]["pid"] for t in study.trials if t.state.name == "COMPLETE"}
    assert lost.user_attrs["owner"]["pid"] not in finished_by  # both nodes' workers wrote to the study
