"""--max_train_minutes: end the learning-rate schedule, and the run, within a wall-clock budget.

The same number of steps takes 41 minutes on one 2-core host and 60 on another (experiments/results/
squad_qg_du_fast_loss/), so a recipe that promises "an hour of training" cannot promise a step count. With a budget,
the run measures its own speed and plans how many steps fit: at every logging step it moves the schedule's last step
to the furthest one whose remaining steps (at the measured speed) and dev evaluations (at their measured duration)
fit in what is left, never above --num_training_steps (the upper bound), so the linear decay reaches 0 where the
budget ends instead of being cut off half-way.

Time used is what train_log.jsonl records (the sum of its windows' ``seconds``: steps, saves and dev evaluations,
not the start-up), so a resumed run goes on counting from what the log holds. The speed is that of the last few
logging windows without their evaluations, so it follows a slowdown (late dropout, a busy machine). The plan is part
of every checkpoint; a resumed run continues it and re-plans with its own speed from there. Each train_log.jsonl
record holds the plan of that moment (``planned_steps``) beside the learning rate: the step count depends on the
machine, so the log, not the command, is what repeats a run (--num_training_steps with its final count follows
nearly the same schedule; the plan moved a little as it measured).
"""
from __future__ import annotations

from collections import deque
from typing import Optional

RECENT_WINDOWS = 4  # logging windows the speed is measured over: recent enough to follow a slowdown


class TimeBudget:
    """The running plan of one process: feed it each logging window (``window``) and each evaluation's duration
    (``evaluated``); ``replan`` gives the schedule's new last step."""

    def __init__(self, minutes: float, upper: int, eval_steps: Optional[int], step: int = 0, used_s: float = 0.0):
        self.budget_s, self.upper, self.eval_steps = 60.0 * minutes, upper, eval_steps
        self.step, self.used_s = step, used_s  # where the last window ended, and the time used up to it
        self.recent: deque = deque(maxlen=RECENT_WINDOWS)  # (steps, seconds without evaluations)
        self.eval_seconds: list[float] = []
        self._eval_in_window = 0.0

    def evaluated(self, seconds: float) -> None:
        self.eval_seconds.append(seconds)
        self._eval_in_window += seconds

    def window(self, step: int, seconds: float) -> None:
        """The logging window that ends at ``step`` took ``seconds`` (train_log's ``seconds``, evaluations
        included)."""
        self.used_s += seconds
        if step > self.step:
            self.recent.append((step - self.step, max(0.0, seconds - self._eval_in_window)))
        self.step, self._eval_in_window = step, 0.0

    def seconds_per_step(self) -> float:
        steps = sum(s for s, _ in self.recent)
        return sum(t for _, t in self.recent) / steps if steps else 0.0

    def replan(self, step: int, current_plan: int) -> int:
        """The new last step: the furthest one whose steps, at the measured speed, and evaluations still due, at
        the mean duration measured so far (none measured: none reserved), fit in what is left of the budget; at least
        ``step`` (stop now), at most the upper bound. Nothing measured yet: the plan stays."""
        rate = self.seconds_per_step()
        if rate <= 0:
            return current_plan
        left = self.budget_s - self.used_s
        mean_eval = sum(self.eval_seconds) / len(self.eval_seconds) if self.eval_seconds else 0.0
        low, high = step, self.upper  # cost(low) = 0 <= left, or left < 0 and low is the answer anyway
        while low < high:  # the cost only grows with the last step: bisect for the furthest that fits
            middle = (low + high + 1) // 2
            if (middle - step) * rate + mean_eval * self.evals_due(step, middle) <= left:
                low = middle
            else:
                high = middle - 1
        return low

    def evals_due(self, step: int, last: int) -> int:
        """Evaluations after ``step`` up to and including ``last`` (every eval_steps, and always at the last)."""
        if not self.eval_steps or last <= step:
            return 0
        periodic = last // self.eval_steps - step // self.eval_steps
        return periodic + (0 if last % self.eval_steps == 0 else 1)
