"""The public Python API; the CLI is a thin shell over these functions."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from autofuse.executable import Executable
from autofuse.ir import Model
from autofuse.settle import settle

if TYPE_CHECKING:
    from autofuse.rewrite import RewriteResult, RuleSet

ModelRef = str | os.PathLike


def resolve(model: ModelRef) -> Path:
    """A model path, with zoo names such as 'zoo:resnet50' materialised first."""
    from autofuse.datasets.zoo import resolve_model

    return resolve_model(str(model))


def read_onnx(model: ModelRef) -> Model:
    """Reads and checks an ONNX file (or zoo name) into the IR, as written."""
    from autofuse.frontend import import_model, read_model

    return import_model(read_model(resolve(model)), source=str(model))


def import_onnx(model: ModelRef, *, shapes: Mapping[str, Sequence[int]] | None = None) -> Model:
    """Reads an ONNX file (or zoo name), folds constants and types every value."""
    return settle(read_onnx(model), shapes)


def compile_model(
    model: ModelRef | Model,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    compiler_options: Mapping[str, Any] | None = None,
    rewrites: Sequence[str] = (),
) -> Executable:
    """Compiles a model through XLA (no tuning) into a callable executable,
    after the named rewrite families (e.g. ("folding", "layout"))."""
    if not isinstance(model, Model):
        model = import_onnx(model, shapes=shapes)
    if rewrites:
        model = rewrite_model(model, rewrites).model
    return Executable(model, compiler_options=compiler_options).compile()


def rule_families() -> dict[str, "RuleSet"]:
    """The rewrite families a user can ask for by name, in pipeline order."""
    from autofuse.rewrite.algebraic import ALGEBRAIC
    from autofuse.rewrite.algorithm import ALGORITHM
    from autofuse.rewrite.blas import BLAS
    from autofuse.rewrite.packed import PACKED
    from autofuse.rewrite.folding import FOLDING
    from autofuse.rewrite.layout import LAYOUT

    return {"folding": FOLDING, "algebraic": ALGEBRAIC, "layout": LAYOUT, "algorithm": ALGORITHM, "blas": BLAS,
            "packed": PACKED}


def rewrite_model(model: Model, families: Sequence[str]) -> "RewriteResult":
    """Applies the named rewrite families (as a pipeline, in canonical order)."""
    from autofuse.errors import AutofuseError
    from autofuse.rewrite import rewrite

    known = rule_families()
    unknown = [f for f in families if f not in known]
    if unknown:
        raise AutofuseError(f"--rewrite: unknown famil{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
                            f"known: {', '.join(known)}")
    return rewrite(model, [rule_set for name, rule_set in known.items() if name in families])


def example_inputs(model: Model, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs that fit the model's input types."""
    from autofuse.datasets.zoo import example_inputs as zoo_inputs

    return zoo_inputs(model, seed=seed)
