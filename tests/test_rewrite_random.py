"""Random rewrite sequences on zoo models stay equal to onnxruntime.

Each case draws, from a seed, a random subset of the rule families in a random
order, plus random per-op alternatives (the algorithm choices the tuner makes
node by node), rewrites the model, compiles it and compares its outputs with
onnxruntime's. ResNet-50 and BERT-base run by default; the other zoo models
are `slow`. Every case prints its sequence before rewriting, so a failure (or
a crash inside a rule) can be replayed. AUTOFUSE_REWRITE_SEQUENCES sets the
number of cases per model (default 2; the seeds stay the same, so a larger
number extends the default cases).
"""
from __future__ import annotations

import os
import random
import zlib

import numpy as np
import pytest

from autofuse.api import compile_model, import_onnx, rule_families
from autofuse.datasets.zoo import example_inputs, list_models, zoo_path
from autofuse.errors import ModelLoadError
from autofuse.rewrite import RuleSet, rewrite
from autofuse.runners.onnxruntime import reference_session, run_session
from autofuse.search.space import choice_rules

DEFAULT = {"zoo:resnet50", "zoo:bert_base"}
SEQUENCES = int(os.environ.get("AUTOFUSE_REWRITE_SEQUENCES", "2"))
# Winograd and reassociation change the rounding: max |diff| <= RTOL * max |reference|.
RTOL = 2e-3


def random_sequence(rng: random.Random) -> tuple[list[str], float]:
    """A random order of a random non-empty subset of the families, and how often a per-op choice fires."""
    families = list(rule_families())
    chosen = rng.sample(families, rng.randint(1, len(families)))
    return chosen, rng.choice([0.0, 0.5, 1.0])


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in DEFAULT else pytest.mark.slow) for n in list_models()]
)
def test_random_rewrite_sequences_match_onnxruntime(name: str, capsys: pytest.CaptureFixture) -> None:
    try:
        path = zoo_path(name, seed=0)
    except ModelLoadError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(error))
    model = import_onnx(path)
    inputs = example_inputs(model, seed=0)
    reference = run_session(reference_session(path), inputs)
    families = rule_families()
    choices = choice_rules()
    rng = random.Random(zlib.crc32(name.encode()))
    for case in range(SEQUENCES):
        order, rate = random_sequence(rng)
        pick = random.Random(rng.random())
        described = f"{name} case {case}: families {order}, per-op rate {rate}"
        with capsys.disabled():
            print(f"\n{described}", flush=True)
        result = rewrite(model, [families[f] for f in order])
        alternatives = RuleSet("choices", tuple(choices.values()))
        per_op = rewrite(result.model, alternatives, where=lambda rule, match: pick.random() < rate)
        fired = {**result.fired, **{f"choice:{k}": v for k, v in per_op.fired.items()}}
        with capsys.disabled():
            print(f"  fired {fired}")
        ours = compile_model(per_op.model)(inputs)
        errors = []
        for got, want in zip(ours, reference):
            error = float(np.max(np.abs(np.asarray(got, np.float64) - want)))
            errors.append((error, float(np.max(np.abs(want))) or 1.0))
        with capsys.disabled():
            print(f"  max |diff| / max |reference|: {max(e / s for e, s in errors):.1e}")
        for index, (error, scale) in enumerate(errors):
            assert error <= RTOL * scale, (f"{described}, fired {fired}: output {index} max |diff| {error:.3e} "
                                           f"> {RTOL} x {scale:.3e}")
