"""Seeded synthetic models: layer shapes the zoo does not have, for the cost model's training data.

Twelve zoo models hold a few hundred distinct layers; a model held out of
training often has shapes no other model has (VGG's 3-channel first conv,
DenseNet's 128 -> 32 bottlenecks). `synth:<family>-<seed>` names a small model
drawn from a seed, usable wherever a model path is (`autofuse dataset collect
synth:cnn-0 ...`), and written once under `$AUTOFUSE_CACHE/synthetic`:

* `cnn`: a chain of 3x3, 1x1 and depthwise convolutions (bias, ReLU) with
  channel counts and image sizes drawn from what vision models use, max-pooling
  between some layers;
* `mlp`: a chain of matrix products with bias (MatMul + Add over [1, tokens,
  features], or Gemm over [tokens, features]) and ReLU, Tanh or Sigmoid, sizes
  drawn from what transformers use.

They are training data only; the cost model is evaluated on the zoo.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from autofuse.errors import ModelLoadError

PREFIX = "synth:"
FAMILIES = ("cnn", "mlp")
VERSION = 1
CHANNELS = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512)
IMAGE_SIZES = (7, 14, 28, 56, 112)
TOKENS = (16, 32, 64, 128, 256, 384)
FEATURES = (64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072)
MAX_LAYER_FLOPS = 2e9  # keeps every layer's timing short


def parse(name: str) -> tuple[str, int]:
    """(family, seed) of a `synth:<family>-<seed>` name."""
    family, _, seed = name.removeprefix(PREFIX).partition("-")
    if family not in FAMILIES or not seed.isdigit():
        raise ModelLoadError(f"unknown synthetic model '{name}'; expected synth:<{'|'.join(FAMILIES)}>-<seed>")
    return family, int(seed)


def synthetic_path(name: str) -> Path:
    """The model file of a synthetic name, written on first use."""
    from autofuse.datasets.zoo import cache_root

    family, seed = parse(name)
    path = cache_root() / "synthetic" / f"{family}-{seed}-v{VERSION}.onnx"
    if not path.is_file():
        import onnx

        path.parent.mkdir(parents=True, exist_ok=True)
        model = _cnn(seed) if family == "cnn" else _mlp(seed)
        onnx.save(model, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    return path


class _Builder:
    """Appends nodes and seeded initializers to one graph."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Any] = []
        self.weights: list[Any] = []

    def weight(self, shape: tuple[int, ...], fan_in: int) -> str:
        from onnx import numpy_helper

        name = f"w{len(self.weights)}"
        data = self.rng.standard_normal(shape).astype(np.float32) * np.float32(np.sqrt(2.0 / max(fan_in, 1)))
        self.weights.append(numpy_helper.from_array(data, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        from onnx import helper

        out = f"v{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def model(self, name: str, shape: list[int], out: str) -> Any:
        """The ONNX model, its output typed by ONNX's shape inference."""
        import onnx
        from onnx import TensorProto, helper

        graph = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], self.weights)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        return onnx.shape_inference.infer_shapes(model)


def _cnn(seed: int) -> Any:
    b = _Builder(seed)
    rng = b.rng
    size = int(rng.choice(IMAGE_SIZES))
    channels = int(rng.choice((3, *CHANNELS[:6])))
    shape, x = [1, channels, size, size], "x"
    for _ in range(int(rng.integers(3, 7))):
        kind = str(rng.choice(("conv3x3", "conv3x3", "conv1x1", "depthwise")))
        kernel = 1 if kind == "conv1x1" else 3
        group = channels if kind == "depthwise" else 1
        out = channels if kind == "depthwise" else int(rng.choice(CHANNELS))
        while 2 * size * size * kernel * kernel * (channels // group) * out > MAX_LAYER_FLOPS and out > 8:
            out //= 2
        w = b.weight((out, channels // group, kernel, kernel), kernel * kernel * channels // group)
        x = b.node("Conv", [x, w, b.weight((out,), out)], kernel_shape=[kernel, kernel], pads=[kernel // 2] * 4,
                   group=group)
        x = b.node("Relu", [x])
        channels = out
        if size > 7 and rng.random() < 0.3:
            x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
            size //= 2
    return b.model(f"synth_cnn_{seed}", shape, x)


def _mlp(seed: int) -> Any:
    """Products as transformers export them: MatMul + Add over [1, tokens, features], or Gemm over
    [tokens, features] (its weight stored transposed or not)."""
    b = _Builder(seed)
    rng = b.rng
    tokens, features = int(rng.choice(TOKENS)), int(rng.choice(FEATURES))
    gemm = bool(rng.random() < 0.5)
    shape, x = ([tokens, features] if gemm else [1, tokens, features]), "x"
    for _ in range(int(rng.integers(2, 5))):
        out = int(rng.choice(FEATURES))
        while 2 * tokens * features * out > MAX_LAYER_FLOPS and out > 64:
            out //= 2
        if gemm:
            trans = int(rng.integers(0, 2))
            w = b.weight((out, features) if trans else (features, out), features)
            x = b.node("Gemm", [x, w, b.weight((out,), out)], transB=trans)
        else:
            x = b.node("Add", [b.node("MatMul", [x, b.weight((features, out), features)]), b.weight((out,), out)])
        x = b.node(str(rng.choice(("Relu", "Tanh", "Sigmoid"))), [x])
        features = out
    return b.model(f"synth_mlp_{seed}", shape, x)
