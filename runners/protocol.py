"""The measurement protocol: warm-up, repeats up to a minimum time, median and spread.

Timings on shared machines are noisy; the median and the interquartile range
are robust to the odd slow run, and comparisons interleave the contenders so
that drift in the machine's speed hits both alike.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Timing:
    """Seconds per run: the median, the interquartile range, and every sample."""

    median_s: float
    iqr_s: float
    samples: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return self.median_s * 1e3

    @property
    def spread_pct(self) -> float:
        return 100.0 * self.iqr_s / self.median_s if self.median_s else 0.0


def summarize(samples: list[float]) -> Timing:
    """Median and IQR of a list of per-run seconds."""
    ordered = sorted(samples)
    if len(ordered) >= 4:
        q = statistics.quantiles(ordered, n=4)
        iqr = q[2] - q[0]
    else:
        iqr = ordered[-1] - ordered[0]
    return Timing(statistics.median(ordered), iqr, tuple(samples))


def measure(
    run: Callable[[], Any],
    *,
    warmup: int = 3,
    min_repeats: int = 10,
    min_seconds: float = 1.0,
    max_repeats: int = 10_000,
) -> Timing:
    """Times `run` (which must block until its work is done)."""
    for _ in range(warmup):
        run()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_repeats and (len(samples) < min_repeats or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        run()
        samples.append(time.perf_counter() - t0)
    return summarize(samples)


def compare(
    contenders: Mapping[str, Callable[[], Any]],
    *,
    rounds: int = 5,
    warmup: int = 3,
    min_repeats: int = 5,
    min_seconds: float = 0.5,
    settle_runs: int = 1,
) -> dict[str, Timing]:
    """Times several callables side by side, interleaved in rounds.

    Each block of a round starts with `settle_runs` untimed runs: the previous
    contender's threads may still be spinning (onnxruntime's do, for a while),
    and would otherwise slow the first timed runs of the next one. Each round
    starts one contender later than the one before, so none always goes first.
    """
    for run in contenders.values():
        for _ in range(warmup):
            run()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            timing = measure(contenders[name], warmup=settle_runs, min_repeats=min_repeats,
                             min_seconds=min_seconds / rounds)
            samples[name].extend(timing.samples)
    return {name: summarize(values) for name, values in samples.items()}
