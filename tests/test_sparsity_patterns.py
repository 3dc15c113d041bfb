"""Balanced and N:M masks: exactly `keep` per bank, parsed from the CLI's spelling."""
from __future__ import annotations

import numpy as np
import pytest

from autofuse.sparsity.patterns import Pattern, PatternError, bank_mask, is_balanced, parse_pattern


@pytest.mark.parametrize("text, kind, keep, bank, sparsity", [
    ("balanced:4/16", "balanced", 4, 16, 0.75),
    ("balanced:8/32", "balanced", 8, 32, 0.75),
    ("nm:2:4", "nm", 2, 4, 0.5),
    ("NM:1:8", "nm", 1, 8, 0.875),
])
def test_parse_pattern(text, kind, keep, bank, sparsity):
    p = parse_pattern(text)
    assert (p.kind, p.keep, p.bank, p.sparsity) == (kind, keep, bank, sparsity)
    assert parse_pattern(str(p)) == p


@pytest.mark.parametrize("text", ["balanced:4", "nm:4:4", "balanced:0/16", "dense", "balanced:4/512"])
def test_bad_patterns_name_the_flag(text):
    with pytest.raises(PatternError, match="pattern"):
        parse_pattern(text)


@pytest.mark.parametrize("pattern", ["balanced:8/16", "balanced:4/16", "balanced:2/16", "balanced:5/32",
                                     "nm:2:4", "nm:1:4", "nm:1:8"])
def test_masks_are_exactly_balanced_and_keep_the_largest(pattern):
    p = parse_pattern(pattern)
    scores = np.random.default_rng(0).standard_normal((24, 64))
    mask = bank_mask(np.abs(scores), p)
    banks = mask.reshape(24, 64 // p.bank, p.bank)
    assert np.all(banks.sum(-1) == p.keep) and is_balanced(mask, p)
    magnitudes = np.abs(scores).reshape(banks.shape)
    kept_min = np.where(banks, magnitudes, np.inf).min(-1)
    dropped_max = np.where(banks, -np.inf, magnitudes).max(-1)
    assert np.all(kept_min >= dropped_max)


def test_is_balanced_rejects_an_unbalanced_mask():
    p = Pattern("balanced", 2, 4)
    mask = bank_mask(np.random.default_rng(1).random((4, 8)), p)
    mask[0, 0] = not mask[0, 0]
    assert not is_balanced(mask, p)


def test_rows_must_split_into_whole_banks():
    with pytest.raises(PatternError, match="not a multiple of the bank size 16"):
        bank_mask(np.ones((2, 24)), parse_pattern("balanced:4/16"))
