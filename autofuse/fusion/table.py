"""DNNFusion's fusion table as data: (first op's type, second op's type) -> verdict.

The verdicts follow the paper's mapping-type analysis. Fusing a One-to-One op
with anything keeps the other op's type and is always profitable (green). A
Many-to-Many or One-to-Many producer feeding a Many-to-Many consumer would
recompute the producer per consumer element (red: never). The remaining cases
depend on shapes and hardware (yellow): they are left to measurement.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from autofuse.ops.registry import Mapping

O2O, REORG, SHUF, O2M, M2M = (
    Mapping.ONE_TO_ONE, Mapping.REORGANIZE, Mapping.SHUFFLE, Mapping.ONE_TO_MANY, Mapping.MANY_TO_MANY,
)


class Verdict(Enum):
    GREEN = "fuse"
    YELLOW = "fuse if measured faster"
    RED = "never"


@dataclass(frozen=True)
class Cell:
    """One cell of the table: the fused op's mapping type and the verdict."""

    fused: Mapping | None
    verdict: Verdict


G, Y, R = Verdict.GREEN, Verdict.YELLOW, Verdict.RED

FUSION_TABLE: dict[tuple[Mapping, Mapping], Cell] = {
    (O2O, O2O): Cell(O2O, G), (O2O, REORG): Cell(REORG, G), (O2O, SHUF): Cell(SHUF, G),
    (O2O, O2M): Cell(O2M, G), (O2O, M2M): Cell(M2M, G),
    (REORG, O2O): Cell(REORG, G), (REORG, REORG): Cell(REORG, G), (REORG, SHUF): Cell(SHUF, G),
    (REORG, O2M): Cell(O2M, G), (REORG, M2M): Cell(M2M, Y),
    (SHUF, O2O): Cell(SHUF, G), (SHUF, REORG): Cell(SHUF, G), (SHUF, SHUF): Cell(SHUF, G),
    (SHUF, O2M): Cell(O2M, G), (SHUF, M2M): Cell(M2M, Y),
    (O2M, O2O): Cell(O2M, G), (O2M, REORG): Cell(O2M, Y), (O2M, SHUF): Cell(O2M, Y),
    (O2M, O2M): Cell(O2M, G), (O2M, M2M): Cell(None, R),
    (M2M, O2O): Cell(M2M, G), (M2M, REORG): Cell(M2M, Y), (M2M, SHUF): Cell(M2M, Y),
    (M2M, O2M): Cell(M2M, Y), (M2M, M2M): Cell(None, R),
}


def fuse(first: Mapping, second: Mapping) -> Cell:
    """The table's cell for `first` feeding `second`."""
    return FUSION_TABLE[(first, second)]
