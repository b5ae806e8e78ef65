"""A search's wall-clock budget: the deadline, Ctrl-C after an epoch, and what a configuration costs."""

from __future__ import annotations

import time

import keras
import numpy as np
import optuna
import pytest
from conftest import undeclared_attributes

import tuner
from tuner.backends._base import REDUCTION_FACTOR
from tuner.backends._base import Resource
from tuner.training._cost import epoch_seconds
from tuner.training._cost import model_flops
from tuner.training._cost import seconds_per_flop
from tuner.training._cost import timed_rate
from tuner.training._training import PROBE_STEPS
from tuner.training._training import Deadline
from tuner.training._training import Patience


class FakeModel:
    stop_training = False


def run_steps(callback: Deadline, clock: list[float], steps: int, step_seconds: float) -> None:
    for step in range(steps):
        callback.on_train_batch_begin(step)
        clock[0] += step_seconds
        callback.on_train_batch_end(step)
        if callback.model.stop_training:
            return


@pytest.fixture
def clock() -> list[float]:
    """The time a ``Deadline`` is given (``clock=lambda: clock[0]``), moved on by the test."""
    return [1000.0]


def test_the_time_budget_keeps_half_a_timeout_for_the_final_trial_but_in_a_pareto_search():
    from tuner._request import SearchRequest
    from tuner._request import TimeBudget

    budget = SearchRequest(timeout=600).checked().time_budget
    assert budget.end - budget.start == 600 and budget.end - budget.explore_end == 300
    assert 590 < budget.left() <= 600 and not budget.passed()
    pareto = SearchRequest(timeout=600, objective="val_accuracy,param_count").checked().time_budget
    assert pareto.explore_end == pareto.end  # a front has no one best to train at the end
    assert SearchRequest().checked().time_budget == TimeBudget() and TimeBudget().left() == float("inf")
    assert SearchRequest(deadline=1.0).checked().time_budget.passed()  # a deadline without a timeout


def test_the_deadline_stops_training_with_time_left_to_test_and_store(clock):
    callback = Deadline(1000.0 + 60, steps_per_epoch=10, eval_steps=30, clock=lambda: clock[0])
    callback.set_model(FakeModel())
    run_steps(callback, clock, 10, 1.0)  # the first epoch ends at 1010
    clock[0] += 5.0  # its validation is not a training step
    callback.on_epoch_end(0)
    run_steps(callback, clock, 100, 1.0)
    assert callback.stopped_by == "deadline" and callback.step_seconds == pytest.approx(1.0)
    # It stopped once the time left fell to what 30 inference batches (a third of a step each), one
    # more step and writing the model take: 10 + 1 + 2 seconds.
    assert clock[0] == pytest.approx(1060 - 13, abs=1.0)


def test_a_first_epoch_that_cannot_end_before_the_deadline_is_stopped_after_a_few_steps(clock):
    callback = Deadline(1000.0 + 100, steps_per_epoch=1000, eval_steps=0, clock=lambda: clock[0])
    callback.set_model(FakeModel())
    run_steps(callback, clock, 1000, 1.0)
    assert callback.stopped_by == "too_slow" and callback.steps == PROBE_STEPS

    fits = Deadline(1000.0 + 2000, steps_per_epoch=1000, eval_steps=0, clock=lambda: clock[0])
    fits.set_model(FakeModel())
    run_steps(fits, clock, 1000, 1.0)
    assert fits.stopped_by is None and not fits.model.stop_training


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_patience_stops_a_stall_at_a_constant_rate_but_not_a_schedule_that_still_anneals(schedule):
    rate = 1e-2 if schedule == "constant" else keras.optimizers.schedules.CosineDecay(1e-2, decay_steps=100)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(rate), loss="mse")
    model.optimizer.build(model.trainable_variables)
    patience = Patience("val_accuracy", patience=2)
    patience.set_model(model)
    stopped_after = None
    for epoch, value in enumerate([0.5, 0.6, 0.6, 0.59, 0.6, 0.6]):
        model.optimizer.iterations.assign(10 * (epoch + 1))  # ten steps an epoch
        patience.on_epoch_end(epoch, {"val_accuracy": value})
        if model.stop_training and stopped_after is None:
            stopped_after = epoch + 1
    # Two epochs without a better value after epoch 2: stopped after epoch 4, unless the rate fell.
    assert stopped_after == (4 if schedule == "constant" else None)


@pytest.mark.parametrize("images, batch_size, first, inside", [
    (54_000, 128, 6_000, (6_000, 18_000)),  # full Fashion-MNIST: a ninth of an epoch is 47 steps
    (54_000, 256, 18_000, (18_000,)),  # a ninth would be 23 steps: a third is the first rung
    (4_500, 128, 4_500, ()),  # a small dataset: judged after whole epochs only
])
def test_the_pruners_first_rung_is_the_smallest_part_of_an_epoch_with_enough_steps(images, batch_size, first, inside):
    resource = Resource(images, batch_size)
    assert resource.first_rung == first and resource.in_first_epoch == inside
    assert resource.at_epoch(3) == 3 * images
    # The rung after those inside the first epoch is reached by its end, where the next report is.
    assert resource.first_rung * REDUCTION_FACTOR ** len(inside) <= images


def test_flops_count_the_multiply_adds_of_convolutions_and_dense_layers():
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, name="dense")(x)
    model = keras.Model(inputs, outputs)
    conv = 2 * (8 * 8 * 4) * (3 * 3 * 2)
    dense = 2 * 10 * (8 * 8 * 4)
    flatten = 8 * 8 * 4  # one operation per value for the rest
    assert model_flops(model) == conv + dense + flatten


def test_seconds_per_flop_comes_from_trials_timed_at_the_same_batch_size():
    def timed(batch_size: int, step_seconds: float, flops: int):
        return optuna.trial.create_trial(value=0.5, user_attrs={
            "batch_size": batch_size, "step_seconds": step_seconds, "flops": flops})

    trials = [timed(32, 0.1, 1000), timed(32, 0.3, 1000), timed(32, 0.2, 1000), timed(64, 9.0, 1)]
    rate = seconds_per_flop(trials, 32)
    assert rate == pytest.approx(0.2 / (1000 * 32))
    assert epoch_seconds(1000, rate, train_images=320, eval_images=96) == pytest.approx(0.2 * 11)
    assert seconds_per_flop([optuna.trial.create_trial(value=0.5)], 32) is None


def test_timing_a_few_training_steps_leaves_the_model_and_its_optimizer_as_they_were():
    from search_spaces import get_space

    space = get_space("resnet")((8, 8, 1), 3, train_steps=100)
    model = space.build(__import__("keras_tuner").HyperParameters())
    x = np.random.randint(0, 17, size=(16, 8, 8, 1)).astype("uint8")
    y = np.arange(16) % 3
    before = model.get_weights()
    rate = timed_rate(model, model_flops(model), x, y, batch_size=8)
    assert rate > 0
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert int(model.optimizer.iterations.numpy()) == 0
    assert all(not np.any(v.numpy()) for v in model.optimizer.variables if v.path.endswith("momentum"))
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)  # and trains on from there
    assert int(model.optimizer.iterations.numpy()) == 2


@pytest.mark.slow
def test_a_configuration_whose_first_epoch_cannot_end_in_time_is_skipped_untrained(sqlite_url, tiny_space,
                                                                                  monkeypatch):
    """A study that timed a trial at one second per FLOP (absurdly slow) predicts that no
    configuration can finish an epoch: each one explored is refused as too costly for the final trial
    to train it properly, which ends exploring; the final trial does not fit either and is skipped.
    Each is stored PRUNED, untrained, and none counts as a trial."""
    monkeypatch.setattr("tuner.backends._optuna.MAX_REJECTED", 3)
    study = tuner.search(tiny_space, "digits", trials=1, epochs=1, study="slow", storage=sqlite_url, keep=0)
    (timed,) = study.trials
    assert timed.user_attrs["flops"] > 0 and timed.user_attrs["step_seconds"] > 0
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(
            value=0.1, params=timed.params, distributions=timed.distributions,
            user_attrs={**timed.user_attrs, "step_seconds": 1.0 * timed.user_attrs["batch_size"],
                        "flops": 1}))
    study = tuner.search(tiny_space, "digits", trials=10, epochs=1, study="slow", storage=sqlite_url, keep=0,
                         timeout=120)
    *rejected, final = study.trials[3:]
    assert len(rejected) == 3 and all("could train it fewer than" in t.user_attrs["rejected"] for t in rejected)
    assert final.user_attrs["role"] == "final" and "first epoch needs" in final.user_attrs["skipped"]
    assert all(t.state.name == "PRUNED" and "epochs" not in t.user_attrs for t in [*rejected, final])
    assert final.user_attrs["predicted_seconds_per_epoch"] > 120
    assert tuner.search(tiny_space, "digits", trials=4, epochs=1, study="slow", storage=sqlite_url,
                        keep=0).trials[-1].state.name == "COMPLETE"


def test_a_search_ends_by_its_timeout_with_the_trial_in_flight_kept(sqlite_url, tmp_path, monkeypatch, tiny_space):
    """With its epochs not planned against the deadline (as on a first trial whose estimate was
    too low), the trial in flight is cut by the deadline and kept as a COMPLETE trial."""
    import tuner.backends._optuna as backend

    monkeypatch.setattr(backend, "plan_epochs", lambda job, trial, model, runner: (None, job.request.epochs, None))
    start = time.monotonic()
    study = tuner.search(tiny_space, "digits", trials=100, epochs=10_000, timeout=5, study="t",
                         storage=sqlite_url, patience=None, pruner="none")
    elapsed = time.monotonic() - start
    assert elapsed < 5 + 6, elapsed  # the trial in flight is tested and stored within the budget
    assert len(study.trials) == 1, [(t.state.name, t.user_attrs) for t in study.trials]
    (cut,) = study.trials
    assert cut.state.name == "COMPLETE" and cut.user_attrs["stopped_by"] == "deadline"
    assert 1 <= cut.user_attrs["epochs"] < 10_000 and cut.value == max(cut.intermediate_values.values())
    assert cut.user_attrs["seconds_per_epoch"] > 0
    exported = tuner.export("t", str(tmp_path / "best.keras"), storage=sqlite_url)
    assert exported["trial"] == cut.number and (tmp_path / "best.keras").is_file()


def test_ctrl_c_after_an_epoch_keeps_the_trial_in_flight_complete(sqlite_url, monkeypatch, tiny_space):
    from tuner.training._progress import SearchProgress

    def interrupt_in_epoch_2(self, number, epoch, logs):
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(SearchProgress, "epoch_ended", interrupt_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        tuner.search(tiny_space, "digits", trials=3, epochs=5, study="i", storage=sqlite_url, pruner="none")
    (trial,) = optuna.load_study(study_name="i", storage=sqlite_url).trials
    assert trial.state.name == "COMPLETE" and trial.user_attrs["stopped_by"] == "interrupt"
    assert trial.user_attrs["epochs"] == 2 and "model_artifact" in trial.user_attrs


def test_a_trial_that_cannot_train_every_epoch_in_time_gets_those_that_fit(sqlite_url, tiny_space):
    """A study whose timed trials predict 20 s an epoch, given 70 s: the next trial plans 2-3 of its
    10 epochs (what is left after loading, testing and storing), and its schedule ends with them."""
    study = tuner.search(tiny_space, "digits", trials=1, epochs=1, study="fit", storage=sqlite_url, keep=0,
                         overrides=["units=16"])  # every trial the same size: its epoch time is predictable
    (timed,) = study.trials
    splits = study.user_attrs["splits"]  # inference on the validation images costs a third of training
    step = 20.0 / (splits["train"] + splits["val"] / 3) * timed.user_attrs["batch_size"] / timed.user_attrs["flops"]
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(
            value=0.1, params=timed.params, distributions=timed.distributions,
            user_attrs={**timed.user_attrs, "step_seconds": step, "flops": 1}))
    study = tuner.search(tiny_space, "digits", trials=4, epochs=10, study="fit", storage=sqlite_url, keep=0,
                         overrides=["units=16"], timeout=70, patience=None, pruner="none")
    planned = study.trials[3]
    assert planned.user_attrs["predicted_seconds_per_epoch"] == pytest.approx(20.0, rel=0.1)
    assert 2 <= planned.user_attrs["max_epochs"] <= 3
    assert planned.state.name == "COMPLETE" and planned.user_attrs["epochs"] == planned.user_attrs["max_epochs"]


@pytest.mark.slow
def test_a_search_explores_then_trains_its_best_configuration_for_the_time_left(sqlite_url, tiny_space):
    """Trials explore for at most ``--epochs`` each until half the timeout is left; then the best
    configuration is trained again, from scratch, for what remains: the search's last trial."""
    study = tuner.search(tiny_space, "digits", trials=100, epochs=1, timeout=14, study="commit", storage=sqlite_url,
                         keep=0, pruner="none")
    *explored, final = study.trials
    assert final.user_attrs["role"] == "final" and final.state.name == "COMPLETE"
    assert all("role" not in t.user_attrs for t in explored) and len(explored) >= 1
    complete = [t for t in explored if t.state.name == "COMPLETE"]
    assert all(t.user_attrs["epochs"] == 1 for t in complete)
    assert final.params == max(complete, key=lambda t: t.value).params
    assert final.user_attrs["max_epochs"] > 1
    split = study.user_attrs["budget_split"]
    trained = [t for t in explored if "skipped" not in t.user_attrs]  # not those too late to explore
    assert split["final_trial"] == final.number and split["explored_trials"] == len(trained)
    assert split["explore_seconds"] <= 14 * 0.5 + 1 <= split["final_seconds"] + 2  # at most half explores
    assert undeclared_attributes(study) == []  # the reference page lists all it stored


@pytest.mark.slow
def test_the_defaults_leave_the_spaces_alternative_its_share_of_a_short_time_to_explore(sqlite_url, tiny_space,
                                                                                        monkeypatch):
    """Predicted far faster than they run, the defaults are planned for all their ``--epochs``; planned
    again from their measured epochs, they take half the time to explore, not all of it: the
    alternative then trains as long as they did. A time to explore that holds fewer than 10 such
    trials is too short for the sampler's proposals: the final trial comes next."""
    import tuner.backends._optuna as backend
    from search_spaces._registry import SPACES

    timed_rate = backend.timed_rate
    monkeypatch.setattr(backend, "timed_rate", lambda *args: timed_rate(*args) / 1000)
    monkeypatch.setattr(SPACES["tiny"].load(), "alternatives", lambda self: ({"units": 32},))
    study = tuner.search(tiny_space, "digits", trials=100, epochs=1000, timeout=30, study="share",
                         storage=sqlite_url, keep=0, pruner="none", patience=None)
    defaults, alternative, final = study.trials
    assert [t.user_attrs.get("role") for t in (defaults, alternative, final)] == [None, "alternative", "final"]
    assert defaults.params["units"] == 16 and alternative.params["units"] == 32
    assert 1 <= defaults.user_attrs["max_epochs"] < 1000 and alternative.user_attrs.get("epochs", 0) >= 1, (
        [(t.state.name, t.user_attrs) for t in study.trials])
    assert alternative.state.name == "COMPLETE" and alternative.datetime_start >= defaults.datetime_complete
    assert final.params == max((defaults, alternative), key=lambda t: t.value).params


@pytest.mark.slow
def test_where_the_training_split_is_too_large_to_explore_the_portfolio_explores_on_a_subset(
        sqlite_url, tiny_space, monkeypatch):
    """Predicted so slow that exploring's half of the timeout could not hold 20 epochs of the whole
    split, the defaults and the alternative explore on the same stratified subset of it, small enough
    for both to train ``--epochs`` in a share of the timeout; the final trial then trains the better
    of them on the whole split."""
    import tuner.backends._optuna as backend
    from search_spaces._registry import SPACES

    monkeypatch.setattr(backend, "timed_rate", lambda model, flops, *args: 0.002 / flops)  # 2 ms an image
    monkeypatch.setattr(backend, "MIN_SUBSET_IMAGES", 100)
    monkeypatch.setattr(SPACES["tiny"].load(), "alternatives", lambda self: ({"units": 32},))
    study = tuner.search(tiny_space, "digits", trials=100, epochs=2, timeout=30, study="subset",
                         storage=sqlite_url, keep=0, pruner="none", patience=None)
    # Exploring ends with them, though they trained far quicker than predicted.
    defaults, alternative, final = study.trials
    train, val = study.user_attrs["splits"]["train"], study.user_attrs["splits"]["val"]
    images = int(backend.SUBSET_SHARE * 30 / (2 * 2) / 0.002 - val / 3)  # 2 trials of 2 epochs
    assert [t.user_attrs.get("train_images") for t in study.trials] == [images, images, None]
    assert 100 <= images < train / 2 and alternative.user_attrs["role"] == "alternative"
    assert defaults.user_attrs["epochs"] == alternative.user_attrs["epochs"] == 2
    assert final.user_attrs["role"] == "final" and final.user_attrs["max_epochs"] > 2
    assert final.params == max((defaults, alternative), key=lambda t: t.value).params
    assert undeclared_attributes(study) == []


def test_a_subset_of_the_training_split_is_stratified_and_the_same_for_a_seed():
    from tuner.data import load_dataset

    data = load_dataset("digits")
    subset = data.subset(500, seed=3)
    assert len(subset.y_train) == len(subset.x_train) == 500 and subset.x_val is data.x_val
    shares = np.bincount(subset.y_train, minlength=10) / 500
    assert np.abs(shares - np.bincount(data.y_train, minlength=10) / len(data.y_train)).max() < 0.01
    assert np.array_equal(subset.y_train, data.subset(500, seed=3).y_train)
    assert not np.array_equal(subset.y_train, data.subset(500, seed=4).y_train)


@pytest.mark.slow
@pytest.mark.core  # a model compiled again mid-trial, its optimizer's state carried over: on every backend
def test_a_single_trial_under_a_timeout_is_the_final_one_planned_again_from_its_measured_epochs(
        sqlite_url, tiny_space, monkeypatch):
    """``--trials 1 --timeout T``: the defaults are the search's final trial, planned to fill the time
    left rather than capped at ``--epochs``. Predicted a thousand times faster than it runs, it first
    plans far too many epochs; once a tenth of its time has passed it is planned again from its
    measured epochs (to end its schedule before the deadline rather than be cut by it in the middle,
    give or take this machine's load), compiled again for the new schedule, and goes on. Planned for
    30 epochs or more, it trains with the shifts ``--augment auto`` adds to long trials, which the
    exploring trials' 2 epochs go without (here: digits counted as a large dataset)."""
    import tuner.backends._optuna as backend

    timed_rate = backend.timed_rate
    monkeypatch.setattr(backend, "timed_rate", lambda *args: timed_rate(*args) / 1000)
    monkeypatch.setattr("tuner.data.SHIFT_BELOW_IMAGES", 0)
    # 20 s: on JAX, under a second test process, loading and compiling took over 8 s of a smaller budget
    study = tuner.search(tiny_space, "digits", trials=1, epochs=2, timeout=20, study="one", storage=sqlite_url,
                         keep=0, pruner="none")
    (final,) = study.trials
    assert final.state.name == "COMPLETE" and final.user_attrs["role"] == "final"
    assert final.user_attrs["planned_epochs"] > 100 * final.user_attrs["max_epochs"]
    assert 2 < final.user_attrs["max_epochs"]
    assert final.user_attrs["max_epochs"] * final.user_attrs["seconds_per_epoch"] < 20
    assert final.user_attrs["epochs"] > 2  # it went on after the re-plan, compiled again
    assert study.user_attrs["settings"]["augment"] == "none" and final.user_attrs["augment"] == "shift"
    split = study.user_attrs["budget_split"]
    assert split["final_trial"] == 0 and split["explored_trials"] == 0 and 0 < split["final_seconds"] <= 20


@pytest.mark.slow
def test_a_configuration_the_final_trial_could_not_train_properly_is_not_explored(sqlite_url, tiny_space,
                                                                                  monkeypatch):
    """A study whose timed trials predict 20 s an epoch, given 100 s: the final trial's 50 s could
    train such a configuration fewer than 20 times, so exploring it is refused before training, with
    the excess as a violated constraint for the sampler; the refusals end exploring."""
    monkeypatch.setattr("tuner.backends._optuna.MAX_REJECTED", 3)
    study = tuner.search(tiny_space, "digits", trials=1, epochs=1, study="dear", storage=sqlite_url, keep=0,
                         overrides=["units=16"])
    (timed,) = study.trials
    splits = study.user_attrs["splits"]
    step = 20.0 / (splits["train"] + splits["val"] / 3) * timed.user_attrs["batch_size"] / timed.user_attrs["flops"]
    study.add_trial(optuna.trial.create_trial(
        value=0.1, params=timed.params, distributions=timed.distributions,
        user_attrs={**timed.user_attrs, "step_seconds": step, "flops": 1}))
    study = tuner.search(tiny_space, "digits", trials=5, epochs=10, study="dear", storage=sqlite_url, keep=0,
                         overrides=["units=16"], timeout=100)
    *refused, final = study.trials[2:]
    assert len(refused) == 3 and all(t.state.name == "PRUNED" for t in refused)
    assert final.user_attrs["role"] == "final" and final.params == timed.params  # the refusals end exploring
    assert all("final trial's" in t.user_attrs["rejected"] and "epochs" not in t.user_attrs for t in refused)
    assert all(t.constraints["epoch_seconds"] > 0 for t in refused)
