"""The task scheduler: spends measurement rounds where the model's latency is.

As in Ansor, every task first gets one round (its default and the first
proposals); after that the next round goes to the task with the largest
estimated share of the model's latency, ``occurrences x best seconds``,
among those whose space is not exhausted. Tasks whose records came from the
database are served like any other, so reused work is never re-measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from autofuse.search.task import Task


@dataclass
class TaskState:
    """What the search knows about one task: measured candidates and whether its space is spent."""

    task: Task
    measured: dict[str, tuple[dict, float | None]] = field(default_factory=dict)
    exhausted: bool = False
    rounds: int = 0

    @property
    def best_s(self) -> float | None:
        times = [t for _, t in self.measured.values() if t is not None]
        return min(times) if times else None

    @property
    def best_candidate(self) -> dict | None:
        good = [(t, c) for c, t in self.measured.values() if t is not None]
        return min(good, key=lambda p: p[0])[1] if good else None



def next_task(states: list[TaskState]) -> TaskState | None:
    """The task to tune next, or None when every space is spent."""
    open_states = [s for s in states if not s.exhausted]
    if not open_states:
        return None
    fresh = [s for s in open_states if s.rounds == 0]
    if fresh:
        return fresh[0]
    return max(open_states, key=lambda s: s.task.weight * (s.best_s or 0.0))
