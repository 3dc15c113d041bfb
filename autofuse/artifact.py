"""The tuned artifact (.afz): the plan and a `jax.export`-serialised executable.

A zip archive with `manifest.json` (format version, source model, target,
decisions, input and output signatures, the measured comparison),
`executable.bin` (the serialised StableHLO of the whole tuned model, weights
as arguments) and `weights.npz`. Loading needs neither the ONNX file nor the
tuning database; the executable is compiled once, with the XLA options the
tuner used, on the first call.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from autofuse.errors import AutofuseError
from autofuse.executable import Executable

FORMAT = "autofuse-artifact"
VERSION = 1


class ArtifactError(AutofuseError):
    """An .afz file cannot be written, read or run."""


def save_artifact(path: str | os.PathLike, executable: Executable, *, source: str,
                  decisions: Mapping[str, Any], target: Mapping[str, Any],
                  median_ms: Mapping[str, float] | None = None, platforms: tuple[str, ...] = ("cpu",)) -> Path:
    """Writes the artifact atomically (a temporary file renamed into place)."""
    path = Path(path)
    graph = executable.model.graph
    exported = executable.export(platforms)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "source": source,
        "decisions": dict(decisions),
        "target": dict(target),
        "median_ms": dict(median_ms or {}),
        "compiler_options": {k: v for k, v in executable.compiler_options.items()},
        "inputs": [{"name": n, "shape": list(graph.type_of(n).shape), "dtype": graph.type_of(n).dtype}
                   for n in graph.inputs],
        "outputs": list(graph.outputs),
        "platforms": list(platforms),
    }
    weights = io.BytesIO()
    np.savez(weights, **{k: np.asarray(v) for k, v in executable.model.weights.items()})
    tmp = path.with_name(path.name + ".tmp")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("manifest.json", json.dumps(manifest, indent=2, default=str))
            z.writestr("executable.bin", bytes(exported.serialize()))
            z.writestr("weights.npz", weights.getvalue(), compress_type=zipfile.ZIP_STORED)
        os.replace(tmp, path)
    except OSError as error:
        raise ArtifactError(f"{path}: cannot write the artifact: {error}") from None
    return path


class TunedModel:
    """A loaded artifact: call it with inputs (by name, or positionally) to get the outputs."""

    def __init__(self, manifest: dict, exported: "jax.export.Exported", weights: dict[str, np.ndarray],
                 path: Path) -> None:
        self.manifest = manifest
        self.path = path
        self._exported = exported
        self._weights = {k: jax.device_put(v) for k, v in weights.items()}
        self._compiled = None

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.manifest["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return list(self.manifest["outputs"])

    def _compile(self):
        if self._compiled is None:
            specs = {i["name"]: jax.ShapeDtypeStruct(tuple(i["shape"]), np.dtype(i["dtype"]))
                     for i in self.manifest["inputs"]}
            weight_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in self._weights.items()}
            lowered = jax.jit(self._exported.call).lower(weight_specs, specs)
            self._compiled = lowered.compile(self.manifest.get("compiler_options") or None)
        return self._compiled

    def __call__(self, *args: np.ndarray, **kwargs: np.ndarray) -> list[np.ndarray]:
        if args and kwargs:
            raise ArtifactError(f"{self.path}: pass inputs either by position or by name, not both")
        names = self.input_names
        if args and len(args) == 1 and isinstance(args[0], Mapping):
            kwargs = dict(args[0])
        elif args:
            if len(args) != len(names):
                raise ArtifactError(f"{self.path}: expected {len(names)} inputs ({', '.join(names)}), got {len(args)}")
            kwargs = dict(zip(names, args))
        missing = [n for n in names if n not in kwargs]
        if missing:
            raise ArtifactError(f"{self.path}: missing inputs {missing}")
        values = {}
        for spec in self.manifest["inputs"]:
            value = np.asarray(kwargs[spec["name"]])
            if list(value.shape) != spec["shape"]:
                raise ArtifactError(f"{self.path}: input '{spec['name']}' has shape {list(value.shape)}, "
                                    f"the artifact was tuned for {spec['shape']}")
            values[spec["name"]] = value.astype(spec["dtype"], copy=False)
        return [np.asarray(v) for v in self._compile()(self._weights, values)]


def _register_native_kernels(blob: bytes) -> None:
    """Registers the autofuse FFI kernels the artifact calls, so its custom calls resolve."""
    if b"autofuse_blas_matmul" in blob:
        from autofuse.blas import kernel_target

        kernel_target()
    from autofuse.gemm import HANDLERS, kernel_targets

    if any(target.encode() in blob for target in HANDLERS):
        kernel_targets()
    if b"autofuse_sparse_matmul" in blob:
        from autofuse.sparsity.native import kernel_target

        kernel_target()


def load_artifact(path: str | os.PathLike) -> TunedModel:
    """Reads an .afz written by `autofuse tune` or `autofuse compile`."""
    from jax import export

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            manifest = json.loads(z.read("manifest.json"))
            if manifest.get("format") != FORMAT:
                raise ArtifactError(f"{path}: not an autofuse artifact (format {manifest.get('format')!r})")
            if manifest.get("version", 0) > VERSION:
                raise ArtifactError(f"{path}: artifact version {manifest['version']} is newer than this "
                                    f"autofuse reads ({VERSION}); upgrade autofuse")
            blob = z.read("executable.bin")
            with np.load(io.BytesIO(z.read("weights.npz")), allow_pickle=False) as data:
                weights = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, KeyError, ValueError, EOFError, OSError) as error:
        raise ArtifactError(f"{path}: not an autofuse artifact ({error})") from None
    platform = jax.default_backend()
    if platform not in manifest.get("platforms", ["cpu"]):
        raise ArtifactError(f"{path}: exported for {manifest.get('platforms')}, this machine runs {platform}")
    _register_native_kernels(blob)
    return TunedModel(manifest, export.deserialize(bytearray(blob)), weights, path)
