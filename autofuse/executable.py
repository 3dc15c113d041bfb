"""A settled Model compiled by XLA into one executable; weights are arguments."""
from __future__ import annotations

import time
from typing import Any, Mapping

import jax
import numpy as np

from autofuse.errors import AutofuseError, ShapeError
from autofuse.ir import Model, TensorType
from autofuse.lowering import evaluate


# Custom-call targets of autofuse's native kernels (registered by autofuse.blas, autofuse.gemm, autofuse.sparsity).
NATIVE_TARGETS = ("autofuse_blas_matmul", "autofuse_gemm", "autofuse_conv_nhwc", "autofuse_attention",
                  "autofuse_attention_qkv", "autofuse_max_pool_nhwc", "autofuse_layer_norm", "autofuse_winograd_nhwc",
                  "autofuse_sparse_matmul")

# XLA turns optimization barriers into no-ops before fusion unless this pass is off.
BARRIER_EXPANDER_PASS = "cse_barrier_expander"


def _keep_barriers(disabled: str) -> str:
    passes = [p for p in disabled.split(",") if p]
    return ",".join(passes + [BARRIER_EXPANDER_PASS] if BARRIER_EXPANDER_PASS not in passes else passes)


class Executable:
    """Compiles a settled model once and runs it on numpy inputs.

    Weights are passed to XLA as arguments (placed on the device once), so
    compile time does not grow with the size of the weights.
    """

    def __init__(
        self,
        model: Model,
        *,
        compiler_options: Mapping[str, Any] | None = None,
        device: jax.Device | None = None,
        barriers: frozenset[str] = frozenset(),
    ) -> None:
        self.model = model
        self.barriers = frozenset(barriers)
        self.compiler_options = dict(compiler_options or {})
        if self.barriers:
            self.compiler_options["xla_disable_hlo_passes"] = _keep_barriers(
                self.compiler_options.get("xla_disable_hlo_passes", ""))
        self.device = device or jax.devices()[0]
        graph = model.graph
        self._input_specs = {}
        for name in graph.inputs:
            t = graph.type_of(name)
            if not isinstance(t, TensorType) or not t.is_static:
                raise ShapeError(f"{model.source}: input '{name}' has no static shape; settle the model first")
            self._input_specs[name] = jax.ShapeDtypeStruct(tuple(t.shape), np.dtype(t.dtype))
        self._weights = {k: jax.device_put(v, self.device) for k, v in model.weights.items()}
        self._compiled = None
        self.compile_seconds: float | None = None

    def _function(self, weights: dict, inputs: dict) -> list:
        return evaluate(self.model.graph, inputs, weights, source=self.model.source, barriers=self.barriers)

    def lower(self) -> "jax.stages.Lowered":
        """The jitted computation lowered to StableHLO (before XLA optimisation)."""
        weight_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in self._weights.items()}
        return jax.jit(self._function).lower(weight_specs, self._input_specs)

    def export(self, platforms: tuple[str, ...] = ("cpu",)) -> "jax.export.Exported":
        """The computation serialisable through `jax.export` (weights and inputs as arguments)."""
        from jax import export

        # autofuse's own native kernels (BLAS, sparse matmul) are custom calls; the
        # loader registers them again before it compiles (see autofuse.artifact).
        checks = [export.DisabledSafetyCheck.custom_call(target) for target in NATIVE_TARGETS]
        weight_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in self._weights.items()}
        return export.export(jax.jit(self._function), platforms=platforms,
                             disabled_checks=checks)(weight_specs, self._input_specs)

    def compile(self) -> "Executable":
        """Compiles through XLA; records how long it took."""
        if self._compiled is None:
            start = time.perf_counter()
            self._compiled = self.lower().compile(self.compiler_options or None)
            self.compile_seconds = time.perf_counter() - start
        return self

    def optimized_hlo(self) -> str:
        """The HLO text after XLA's optimisation passes."""
        return self.compile()._compiled.as_text()

    def device_weights(self) -> dict[str, jax.Array]:
        """The weights as placed on the device (the executable's own arguments)."""
        return self._weights

    def run_device(self, inputs: Mapping[str, Any], weights: Mapping[str, jax.Array] | None = None
                   ) -> list[jax.Array]:
        """Runs on the device and returns device arrays (for timing loops); `weights`
        replaces the executable's own (same names, shapes and dtypes)."""
        self.compile()
        missing = set(self._input_specs) - set(inputs)
        if missing:
            raise AutofuseError(f"{self.model.source}: missing inputs {sorted(missing)}")
        args = {}
        for name, spec in self._input_specs.items():
            value = np.asarray(inputs[name])
            if value.shape != spec.shape:
                raise ShapeError(
                    f"{self.model.source}: input '{name}' has shape {list(value.shape)}, "
                    f"the model was compiled for {list(spec.shape)}"
                )
            args[name] = value.astype(spec.dtype, copy=False)
        return self._compiled(self._weights if weights is None else dict(weights), args)

    def __call__(self, inputs: Mapping[str, Any]) -> list[np.ndarray]:
        """Runs the model; returns its outputs as numpy arrays, in graph order."""
        return [jax.tree_util.tree_map(np.asarray, v) for v in self.run_device(inputs)]  # sequences stay lists
