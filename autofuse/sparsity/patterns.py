"""Sparsity patterns: balanced banks (Yao et al., AAAI 2019) and N:M (NVIDIA's 2:4).

Both split every weight *row* (one output unit's weights, along the reduction
axis) into banks of `bank` consecutive weights and keep exactly `keep` of each
bank. They differ only in scale: balanced banks are wide (16, 32, 64) and give
the pruner freedom, N:M groups are small (2:4, 1:4, 1:8) and match hardware.
Because every row keeps the same count in every bank, the sparse work is
perfectly load-balanced and the kept weights fit a dense (values, offsets) array.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from autofuse.errors import AutofuseError


class PatternError(AutofuseError):
    """A pattern string or a pattern that does not fit a weight."""


@dataclass(frozen=True, order=True)
class Pattern:
    """Keep `keep` weights in every bank of `bank` consecutive weights of a row."""

    kind: str  # "balanced" or "nm"
    keep: int
    bank: int

    def __post_init__(self) -> None:
        if self.kind not in ("balanced", "nm"):
            raise PatternError(f"pattern kind {self.kind!r}: expected 'balanced' or 'nm'")
        if not 0 < self.keep < self.bank:
            raise PatternError(f"pattern {self}: need 0 < kept ({self.keep}) < bank ({self.bank})")
        if self.bank > 256:
            raise PatternError(f"pattern {self}: banks wider than 256 are not supported (offsets are uint8)")

    @property
    def sparsity(self) -> float:
        """The fraction of weights removed."""
        return 1.0 - self.keep / self.bank

    def __str__(self) -> str:
        return f"balanced:{self.keep}/{self.bank}" if self.kind == "balanced" else f"nm:{self.keep}:{self.bank}"


_BALANCED = re.compile(r"balanced:(\d+)/(\d+)")
_NM = re.compile(r"nm:(\d+):(\d+)")


def parse_pattern(text: str, flag: str = "--pattern") -> Pattern:
    """'balanced:4/16' (keep 4 of every 16) or 'nm:2:4' (keep 2 of every 4); errors name `flag`."""
    spec = text.strip().lower()
    for kind, regex in (("balanced", _BALANCED), ("nm", _NM)):
        found = regex.fullmatch(spec)
        if found:
            return Pattern(kind, int(found.group(1)), int(found.group(2)))
    raise PatternError(f"{flag} {text!r}: expected balanced:K/B (e.g. balanced:4/16) or nm:N:M (e.g. nm:2:4)")


def fits(pattern: Pattern, row_length: int) -> str | None:
    """None when rows of this length split into whole banks, else why not."""
    if row_length % pattern.bank:
        return f"reduction length {row_length} is not a multiple of the bank size {pattern.bank}"
    return None


def bank_mask(scores: np.ndarray, pattern: Pattern) -> np.ndarray:
    """The keep-mask of a (rows, K) score matrix: the `keep` largest scores of every bank.

    Ties go to the lower index, so the mask is deterministic.
    """
    rows, length = scores.shape
    reason = fits(pattern, length)
    if reason:
        raise PatternError(f"pattern {pattern}: {reason}")
    banks = np.asarray(scores, np.float64).reshape(rows, length // pattern.bank, pattern.bank)
    order = np.argsort(-banks, axis=-1, kind="stable")[..., : pattern.keep]
    mask = np.zeros(banks.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=-1)
    return mask.reshape(rows, length)


def is_balanced(mask: np.ndarray, pattern: Pattern) -> bool:
    """True when every bank of every row keeps exactly `pattern.keep` weights."""
    rows, length = mask.shape
    if fits(pattern, length):
        return False
    counts = mask.reshape(rows, length // pattern.bank, pattern.bank).sum(axis=-1)
    return bool(np.all(counts == pattern.keep))
