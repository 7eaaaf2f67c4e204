"""--max_train_minutes: the plan's arithmetic against a brute-force count, and whole runs on a simulated clock
(each step takes one simulated second), so the step counts are exact and a resumed run can be compared with an
uninterrupted one."""
from __future__ import annotations

import json
import types

import pytest
from conftest import train_args
from safetensors.torch import load_file

from s2s_ft.cli import train
from s2s_ft.training import loop, rundir
from s2s_ft.training.time_budget import TimeBudget


def brute_force_plan(step, used_s, budget_s, rate, eval_s, every, upper):
    """The furthest last step whose steps and evaluations (every ``every`` steps and at the last) fit."""
    def cost(last):
        evals = sum(1 for s in range(step + 1, last + 1) if (every and s % every == 0) or s == last) if every else 0
        return (last - step) * rate + eval_s * (evals if last > step else 0)
    return max([step] + [last for last in range(step, upper + 1) if cost(last) <= budget_s - used_s])


@pytest.mark.parametrize("step, used_s, rate, eval_s, every, upper", [
    (100, 100.0, 2.0, 0.0, None, 1000), (100, 100.0, 2.0, 7.0, 20, 1000), (100, 100.0, 2.0, 0.0, None, 200),
    (100, 700.0, 2.0, 7.0, 20, 1000), (100, 599.0, 2.0, 0.0, None, 1000), (0, 0.0, 0.5, 30.0, 7, 5000),
    (33, 17.0, 1.3, 11.0, 50, 400)])
def test_the_plan_is_the_furthest_last_step_that_fits(step, used_s, rate, eval_s, every, upper):
    budget = TimeBudget(minutes=10.0, upper=upper, eval_steps=every, step=step, used_s=used_s)
    budget.recent.append((10, 10 * rate))
    if eval_s:
        budget.evaluated(eval_s)
    assert budget.replan(step, upper) == brute_force_plan(step, used_s, 600.0, rate, eval_s, every, upper)


@pytest.mark.parametrize("step, last, every", [(0, 10, 3), (3, 9, 3), (4, 4, 3), (7, 100, 10), (0, 5, None)])
def test_evaluations_due_match_a_brute_force_count(step, last, every):
    budget = TimeBudget(1.0, 1000, every)
    expected = 0 if every is None else sum(1 for s in range(step + 1, last + 1) if s % every == 0 or s == last)
    assert budget.evals_due(step, last) == expected


def test_replan_measures_steps_without_evaluations_and_reserves_the_evaluations_due():
    budget = TimeBudget(minutes=2.0, upper=10_000, eval_steps=50)
    assert budget.replan(0, 10_000) == 10_000  # nothing measured yet: the plan stays
    budget.window(25, 25.0)  # 1 s per step
    assert budget.replan(25, 10_000) == 25 + 95  # 95 s left; no evaluation measured yet
    budget.evaluated(10.0)
    budget.window(50, 35.0)  # 25 steps in 25 s plus the 10-s evaluation
    assert budget.seconds_per_step() == 1.0 and budget.used_s == 60.0
    # 60 s left: 50 more steps and the evaluation at step 100, the last (at 110: 60 s of steps and two evaluations)
    assert budget.replan(50, 120) == 100


def test_recent_windows_follow_a_slowdown():
    budget = TimeBudget(minutes=100.0, upper=10_000, eval_steps=None)
    for end in range(10, 110, 10):
        budget.window(end, 10.0)  # 1 s per step
    for end in range(110, 150, 10):
        budget.window(end, 20.0)  # then 2 s per step
    assert budget.seconds_per_step() == 2.0


class Killed(Exception):
    """A kill, as far as the run can tell: it stops where it is."""


@pytest.fixture
def simulated_clock(monkeypatch):
    """Every training step takes one simulated second, and nothing else takes any time."""
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))

    def one_second_per_step(name, step=None):
        if name == rundir.STEP_DELAY_ENV:
            clock.now += 1.0
    monkeypatch.setattr(rundir, "hook_delay", one_second_per_step)
    return clock


def budget_run(out, tiny_bert, train_file, *extra):
    return train.main(train_args(tiny_bert, train_file, out, "--num_training_steps", "100000",
                                 "--max_train_minutes", "1", "--num_warmup_steps", "3", "--logging_steps", "5",
                                 "--save_steps", "10", *extra))


def records(out) -> list[dict]:
    return [json.loads(line) for line in open(out / rundir.TRAIN_LOG)]


def test_a_budget_run_ends_its_schedule_where_the_budget_ends(simulated_clock, tiny_bert, train_file, tmp_path):
    out = tmp_path / "run"
    assert budget_run(out, tiny_bert, train_file) == 0
    log = records(out)
    assert log[-1]["step"] == 60 and log[-1]["planned_steps"] == 60  # 60 simulated seconds, one per step
    assert sum(r["seconds"] for r in log) == 60.0
    assert log[-1]["lr"] == 0.0 and log[-2]["lr"] > 0.0  # the decay reaches 0 at the last step, not before
    assert (out / "ckpt-60" / "training_state.pt").is_file()


def test_a_budget_run_resumes_exactly(simulated_clock, tiny_bert, train_file, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    assert budget_run(whole, tiny_bert, train_file) == 0

    cut = tmp_path / "cut"
    real_save = loop.save_and_evaluate

    def killed_after_step_33(run, trimmer):
        real_save(run, trimmer)
        if run.step == 33:
            raise Killed  # after ckpt-30: steps 31-33 are lost and done again
    monkeypatch.setattr(loop, "save_and_evaluate", killed_after_step_33)
    with pytest.raises(Killed):
        budget_run(cut, tiny_bert, train_file)
    monkeypatch.setattr(loop, "save_and_evaluate", real_save)
    assert budget_run(cut, tiny_bert, train_file) == 0

    assert [r["step"] for r in records(cut)] == [r["step"] for r in records(whole)]
    assert [r["lr"] for r in records(cut)] == [r["lr"] for r in records(whole)]
    resumed, uninterrupted = (load_file(str(d / "ckpt-60" / "model.safetensors")) for d in (cut, whole))
    assert resumed.keys() == uninterrupted.keys()
    assert all(bool((resumed[k] == uninterrupted[k]).all()) for k in resumed)


def test_the_upper_bound_still_holds(simulated_clock, tiny_bert, train_file, tmp_path):
    out = tmp_path / "run"
    assert train.main(train_args(tiny_bert, train_file, out, "--num_training_steps", "20", "--max_train_minutes",
                                 "1", "--logging_steps", "5", "--save_steps", "10")) == 0
    assert records(out)[-1]["step"] == 20 and records(out)[-1]["planned_steps"] == 20
