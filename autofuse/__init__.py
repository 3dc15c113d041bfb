"""autofuse: an auto-tuner that makes ONNX models run faster through XLA."""
from __future__ import annotations

import jax

# ONNX is strictly typed: int64 and float64 must stay 64-bit.
jax.config.update("jax_enable_x64", True)

from autofuse import ops  # noqa: E402,F401  (registers every lowering)
from autofuse.errors import AutofuseError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["AutofuseError", "__version__"]

from autofuse.api import compile_model, example_inputs, import_onnx  # noqa: E402

__all__ += ["compile_model", "example_inputs", "import_onnx"]


def tune(model, **options):  # noqa: ANN001,ANN201 - see autofuse.tuning.tune
    """Tunes a model on this machine (see `autofuse.tuning.tune`)."""
    from autofuse.tuning import tune as _tune

    return _tune(model, **options)


def load(path):  # noqa: ANN001,ANN201 - see autofuse.artifact.load_artifact
    """Loads a tuned .afz artifact; the result is callable on the model's inputs."""
    from autofuse.artifact import load_artifact

    return load_artifact(path)


__all__ += ["load", "tune"]
