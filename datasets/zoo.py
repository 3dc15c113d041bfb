"""The model zoo: real architectures in light form, materialised with seeded weights.

`zoo:<name>` works wherever a model path does (`resolve_model`). The CNNs come
from the onnx package's own light models; BERT-base, GPT-2 and MobileNetV2 from
the project's `shared/models` folder (or `$AUTOFUSE_MODELS_DIR`). Materialised
files are cached under `$AUTOFUSE_CACHE/zoo` (default `~/.cache/autofuse/zoo`).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from autofuse.errors import ModelLoadError
from autofuse.ir import Model, TensorType

PREFIX = "zoo:"
# Token ids stay below this: small ids exercise the same code as any others.
MAX_TOKEN_ID = 1000
# Calibrated BatchNorm variances stay above this (channels dead on the calibration batch).
MIN_VARIANCE = 1e-2

# zoo name -> file in the onnx package's backend/test/data/light folder.
ONNX_LIGHT = {
    "resnet50": "light_resnet50.onnx",
    "densenet121": "light_densenet121.onnx",
    "inception_v1": "light_inception_v1.onnx",
    "inception_v2": "light_inception_v2.onnx",
    "shufflenet": "light_shufflenet.onnx",
    "squeezenet": "light_squeezenet.onnx",
    "vgg19": "light_vgg19.onnx",
    "alexnet": "light_bvlc_alexnet.onnx",
    "zfnet512": "light_zfnet512.onnx",
}
# zoo name -> file in shared/models (torch exports from transformers).
SHARED = {
    "bert_base": "light_bert_base.onnx",
    "gpt2": "light_gpt2.onnx",
    "mobilenet_v2": "light_mobilenet_v2.onnx",
}


def list_models() -> list[str]:
    """Every zoo name, `zoo:` prefix included."""
    return [PREFIX + name for name in (*ONNX_LIGHT, *SHARED)]


def _bare(name: str) -> str:
    bare = name.removeprefix(PREFIX)
    if bare not in ONNX_LIGHT and bare not in SHARED:
        raise ModelLoadError(f"unknown zoo model '{name}'; known: {', '.join(list_models())}")
    return bare


def onnx_light_dir() -> Path:
    """The onnx package's folder of light models (found without importing onnx)."""
    spec = importlib.util.find_spec("onnx")
    if spec is None or spec.origin is None:
        raise ModelLoadError("the onnx package is not installed; its light models hold the zoo CNNs")
    return Path(spec.origin).parent / "backend" / "test" / "data" / "light"


def shared_model_dirs() -> list[Path]:
    """Where BERT, GPT-2 and MobileNetV2 are looked for, in order."""
    dirs = []
    if os.environ.get("AUTOFUSE_MODELS_DIR"):
        dirs.append(Path(os.environ["AUTOFUSE_MODELS_DIR"]))
    dirs.append(Path(__file__).resolve().parents[1].parent / "shared" / "models")
    return dirs


def light_path(name: str) -> Path:
    """The light (unmaterialised) ONNX file of a zoo model."""
    bare = _bare(name)
    if bare in ONNX_LIGHT:
        path = onnx_light_dir() / ONNX_LIGHT[bare]
        if not path.is_file():
            raise ModelLoadError(f"zoo:{bare}: {path} is missing from the installed onnx package")
        return path
    for folder in shared_model_dirs():
        if (folder / SHARED[bare]).is_file():
            return folder / SHARED[bare]
    looked = ", ".join(str(d) for d in shared_model_dirs())
    raise ModelLoadError(
        f"zoo:{bare}: {SHARED[bare]} not found; looked in {looked}. "
        "Set AUTOFUSE_MODELS_DIR to the folder that holds it."
    )


def cache_root() -> Path:
    """autofuse's cache folder: `$AUTOFUSE_CACHE`, default `~/.cache/autofuse`."""
    return Path(os.environ.get("AUTOFUSE_CACHE") or Path.home() / ".cache" / "autofuse")


def cache_dir() -> Path:
    """The folder of materialised zoo models."""
    return cache_root() / "zoo"


def zoo_path(name: str, seed: int = 0) -> Path:
    """The materialised model file, written once per (light file, seed, version)."""
    from autofuse.frontend import read_model
    from autofuse.frontend.materialize import MATERIALIZE_VERSION, materialize, save_model

    source = light_path(name)
    digest = hashlib.sha1(source.read_bytes()).hexdigest()[:10]
    target = cache_dir() / f"{_bare(name)}-seed{seed}-v{MATERIALIZE_VERSION}-{digest}.onnx"
    if not target.is_file():
        save_model(calibrate_batchnorm(materialize(read_model(source), seed=seed), seed=seed), target)
    return target


def calibrate_batchnorm(model: Any, seed: int = 0) -> Any:
    """Sets each BatchNormalization's mean and variance to the per-channel
    statistics of its input on a seeded random batch, layer by layer.

    Random kernels with fixed statistics let activations grow through residual
    sums (ResNet-50's logits reach 1e4, its softmax a one-hot vector, which hides
    errors); calibrated statistics keep them near unit scale, as training does.
    `model` is an onnx ModelProto, handled only through the front end.
    """
    from autofuse.frontend.materialize import (
        batchnorm_statistics,
        initializer_arrays,
        probe_bytes,
        replace_initializers,
    )
    from autofuse.runners.onnxruntime import reference_session

    layers = batchnorm_statistics(model)
    if not layers:
        return model
    names = [n for _, mean, var in layers for n in (mean, var)]
    stats = initializer_arrays(model, names)
    session = reference_session(probe_bytes(model, as_inputs=names, outputs=[x for x, _, _ in layers]))
    rng = np.random.default_rng(seed)
    feed = {
        i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
        for i in session.get_inputs()
        if i.name not in stats
    }
    for x, mean, var in layers:
        (activation,) = session.run([x], {**feed, **stats})
        axes = tuple(a for a in range(activation.ndim) if a != 1)
        stats[mean] = activation.mean(axis=axes)
        stats[var] = np.maximum(activation.var(axis=axes), MIN_VARIANCE)
    return replace_initializers(model, stats)


def resolve_model(name_or_path: str | os.PathLike, seed: int = 0) -> Path:
    """A model path; `zoo:<name>` is materialised (once) and its cached file returned,
    `synth:<family>-<seed>` drawn (once, `datasets.synthetic`)."""
    from autofuse.datasets import synthetic

    text = os.fspath(name_or_path)
    if text.startswith(PREFIX):
        return zoo_path(text, seed=seed)
    if text.startswith(synthetic.PREFIX):
        return synthetic.synthetic_path(text)
    return Path(text)


def example_inputs(model: Model, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs: floats standard normal, integers valid indices.

    Integer inputs that index an embedding (a Gather's indices) stay below its
    row count and below `MAX_TOKEN_ID`; symbolic dimensions become 1.
    """
    rng = np.random.default_rng(seed)
    inputs = {}
    for name in model.graph.inputs:
        t = model.graph.type_of(name)
        if not isinstance(t, TensorType) or t.shape is None:
            raise ModelLoadError(f"{model.source}: input '{name}' has no tensor shape to draw an example from")
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in t.shape)
        dtype = np.dtype(t.dtype)
        if dtype.kind == "f":
            inputs[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            inputs[name] = rng.integers(0, _index_bound(model, name), shape).astype(dtype)
        elif dtype.kind == "b":
            inputs[name] = rng.integers(0, 2, shape).astype(bool)
        else:
            raise ModelLoadError(f"{model.source}: input '{name}' has dtype {dtype}, no example generator")
    return inputs


def _index_bound(model: Model, name: str) -> int:
    """Exclusive upper bound for an integer input: the smallest table it indexes."""
    bound = MAX_TOKEN_ID
    for node in model.graph.nodes:
        if node.op_type == "Gather" and node.inputs[1:2] == (name,):
            rows = _leading_dim(model, node.inputs[0])
            if rows:
                bound = min(bound, rows)
    return bound


def _leading_dim(model: Model, value: str) -> int | None:
    if value in model.weights:
        return int(model.weights[value].shape[0])
    t = model.graph.type_of(value)
    if isinstance(t, TensorType) and t.shape and isinstance(t.shape[0], int):
        return t.shape[0]
    return None
