"""Evolutionary search over a task's decisions, ranked by a cost model.

Each round proposes candidates not measured yet: the default first, then
mutations (one decision changed) and crossovers (decisions mixed from two
parents) of the best measured ones; the cost model ranks the proposals and
the top-k are measured, except that with probability `epsilon` a slot goes to
a random unmeasured candidate (exploration, so a wrong model cannot starve a
good region). Small spaces are enumerated outright.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from autofuse.search.space import Candidate, Space, candidate_key

# Scores candidates of one task: lower means predicted faster.
RankFn = Callable[[Sequence[Candidate]], Sequence[float]]


@dataclass(frozen=True)
class EvolutionConfig:
    population: int = 64
    mutation_rate: float = 0.85
    epsilon: float = 0.1
    enumerate_below: int = 256


def _mutate(candidate: Candidate, space: Space, rng: random.Random) -> Candidate:
    name, choices = rng.choice(space.decisions)
    others = [c for c in choices if c != candidate.get(name)]
    return dict(candidate, **{name: rng.choice(others)}) if others else dict(candidate)


def _crossover(a: Candidate, b: Candidate, space: Space, rng: random.Random) -> Candidate:
    return {name: (a if rng.random() < 0.5 else b).get(name, choices[0]) for name, choices in space.decisions}


def propose(space: Space, measured: Mapping[str, tuple[Candidate, float | None]], k: int,
            rank: RankFn, rng: random.Random, config: EvolutionConfig = EvolutionConfig()) -> list[Candidate]:
    """Up to `k` unmeasured candidates for the next round.

    `measured` maps candidate keys to (candidate, seconds or None for a failure).
    """
    if not space.decisions:
        default = space.default()
        return [] if candidate_key(default) in measured else [default]
    default = space.default()
    if candidate_key(default) not in measured:
        head = [default]
        k -= 1
    else:
        head = []
    if space.size() <= config.enumerate_below:
        pool = [c for c in space.all_candidates() if candidate_key(c) not in measured and c != default]
    else:
        pool = _evolve(space, measured, rng, config)
    if not pool or k <= 0:
        return head
    scores = list(rank(pool))
    ranked = [pool[i] for i in sorted(range(len(pool)), key=lambda i: scores[i])]
    chosen: list[Candidate] = []
    for _ in range(min(k, len(ranked))):
        remaining = [c for c in ranked if c not in chosen]
        pick = rng.choice(remaining) if rng.random() < config.epsilon else remaining[0]
        chosen.append(pick)
    return head + chosen


def _evolve(space: Space, measured: Mapping[str, tuple[Candidate, float | None]], rng: random.Random,
            config: EvolutionConfig) -> list[Candidate]:
    good = sorted(((t, c) for c, t in measured.values() if t is not None), key=lambda p: p[0])
    parents = [c for _, c in good[:8]] or [space.default()]
    seen = set(measured)
    pool: dict[str, Candidate] = {}
    attempts = 0
    while len(pool) < config.population and attempts < config.population * 20:
        attempts += 1
        if len(parents) > 1 and rng.random() > config.mutation_rate:
            child = _crossover(rng.choice(parents), rng.choice(parents), space, rng)
        else:
            child = _mutate(rng.choice(parents), space, rng)
        key = candidate_key(child)
        if key not in seen and key not in pool:
            pool[key] = child
    return list(pool.values())
