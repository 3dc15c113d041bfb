"""BLAS rules: matrix products with a constant float32 weight run through OpenBLAS (`BlasMatMul`).

Algorithm choices, one per op (the node's root is the last matched node):

* `matmul_blas`: MatMul(x, W[K, N]) -> BlasMatMul(x, W).
* `gemm_blas`: Gemm(A, B, C?) with a constant B -> BlasMatMul(A, alpha * op(B), beta * C):
  transB, alpha and beta are applied to the weights here, once; C must be a
  constant per-column bias.
* `conv_nhwc_blas`: a ConvNHWC (group 1, constant weights) -> PatchesNHWC (im2col)
  -> BlasMatMul with the HWIO kernel as a (kh*kw*C, K) matrix; a pointwise,
  unpadded, stride-1 one skips the patches.

Epilogues folded into a BlasMatMul that feeds them alone:

* `blas_bias`: Add(BlasMatMul(x, W), b) with a constant per-column b -> BlasMatMul(x, W, b).
* `blas_relu`: Relu(BlasMatMul(...)) -> BlasMatMul(..., relu=1).

Each product is split over XLA's intra-op threads (`split=1`); the `*_1t`
variants (`matmul_blas_1t` ...) run it whole on the calling thread instead,
which measured as fast or faster while other work shares the cores.

`BLAS` holds the split forms and the epilogues (the whole-model family
`--rewrite ...,blas`). For the tuner, `BLAS_RULES` and `BLAS_ALTERNATIVES`
list the per-op choices in the form of `autofuse.rewrite.algorithm.RULES` /
`ALTERNATIVES`; after a search fires a choice, `BLAS_EPILOGUE` folds the bias
and ReLU that follow.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from autofuse.ir import Node
from autofuse.ops.blas import DOMAIN
from autofuse.rewrite.engine import Match, Replacement, Rule, RuleSet, View
from autofuse.rewrite.transpose import constant_conv_decline
from autofuse.rewrite.weights import column_bias, float32_decline, weight_decline

FAMILY = "blas"
OP = "BlasMatMul"
WINDOW_ATTRS = ("auto_pad", "dilations", "kernel_shape", "pads", "strides")


def _root(node: Node, view: View) -> Match | None:
    return (node,)


def _attrs(**values) -> tuple[tuple[str, object], ...]:
    return tuple(sorted(values.items()))


def _blas(inputs: tuple[str, ...], outputs: tuple[str, ...], name: str) -> Node:
    return Node(OP, inputs, outputs, _attrs(relu=0, split=1), DOMAIN, name)


# ---------------------------------------------------------------- MatMul

def _check_matmul(m: Match, view: View) -> str | None:
    node = m[0]
    return weight_decline(view, node.inputs[1]) or float32_decline(view, node.inputs[0], "A")


def _matmul(m: Match, view: View) -> Replacement:
    node = m[0]
    return Replacement(nodes=(_blas(node.inputs[:2], node.outputs, node.name),))


MATMUL_BLAS = Rule("matmul_blas", FAMILY, frozenset({"MatMul"}), _root, _check_matmul, _matmul)


# ---------------------------------------------------------------- Gemm

def _check_gemm(m: Match, view: View) -> str | None:
    node = m[0]
    if node.attr("transA", 0):
        return "transA=1: A would need a transpose at run time"
    reason = weight_decline(view, node.inputs[1]) or float32_decline(view, node.inputs[0], "A")
    if reason or len(node.inputs) < 3 or not node.inputs[2]:
        return reason
    columns = view.tensor(node.inputs[1]).shape[0 if node.attr("transB", 0) else 1]
    bias = column_bias(view, node.inputs[2], columns, 2)
    return bias if isinstance(bias, str) else None


def _gemm(m: Match, view: View) -> Replacement:
    node = m[0]
    w = view.tensor(node.inputs[1])
    w = w.T if node.attr("transB", 0) else w
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    inputs, tensors = [node.inputs[0]], {}
    if alpha == 1.0 and not node.attr("transB", 0):
        inputs.append(node.inputs[1])
    else:
        inputs.append(view.fresh(node.inputs[1] + "_blas"))
        tensors[inputs[-1]] = np.ascontiguousarray((w.astype(np.float64) * alpha).astype(np.float32))
    if len(node.inputs) > 2 and node.inputs[2]:
        inputs.append(view.fresh(node.inputs[2] + "_bias"))
        bias = column_bias(view, node.inputs[2], w.shape[1], 2)
        tensors[inputs[-1]] = (bias.astype(np.float64) * beta).astype(np.float32)
    return Replacement(nodes=(_blas(tuple(inputs), node.outputs, node.name),), tensors=tensors)


GEMM_BLAS = Rule("gemm_blas", FAMILY, frozenset({"Gemm"}), _root, _check_gemm, _gemm)


# ---------------------------------------------------------------- ConvNHWC

def _check_conv(m: Match, view: View) -> str | None:
    conv = m[0]
    if conv.domain != DOMAIN:
        return "not the autofuse ConvNHWC"
    reason = constant_conv_decline(conv, view)
    if reason:
        return reason
    if len(view.shape(conv.inputs[0])) != 4:
        return f"{len(view.shape(conv.inputs[0])) - 2}-D convolution, not 2-D"
    if conv.attr("group", 1) != 1:
        return "grouped convolution"
    return float32_decline(view, conv.inputs[0], "the input") or (
        None if view.tensor(conv.inputs[1]).dtype == np.float32 else "the weights are not float32")


def _pointwise(conv: Node, kernel: tuple[int, ...]) -> bool:
    return (kernel == (1, 1) and conv.attr("auto_pad", "NOTSET") in ("NOTSET", "VALID")
            and all(int(v) == 1 for v in conv.attr("strides", ()) or ())
            and not any(int(p) for p in conv.attr("pads", ()) or ()))


def _conv(m: Match, view: View) -> Replacement:
    conv = m[0]
    w = view.tensor(conv.inputs[1])
    kh, kw, c, k = w.shape
    w2 = view.fresh(conv.inputs[1] + "_blas")
    tensors = {w2: np.ascontiguousarray(w.reshape(kh * kw * c, k))}
    bias = tuple(conv.inputs[2:3]) if len(conv.inputs) > 2 and conv.inputs[2] else ()
    if _pointwise(conv, (kh, kw)):
        return Replacement(nodes=(_blas((conv.inputs[0], w2) + bias, conv.outputs, conv.name),), tensors=tensors)
    window = {**{k: v for k, v in conv.attrs if k in WINDOW_ATTRS}, "kernel_shape": (kh, kw)}
    patches = view.fresh(conv.outputs[0] + "_patches")
    nodes = (Node("PatchesNHWC", (conv.inputs[0],), (patches,), _attrs(**window), DOMAIN, conv.name),
             _blas((patches, w2) + bias, conv.outputs, conv.name))
    return Replacement(nodes=nodes, tensors=tensors)


CONV_NHWC_BLAS = Rule("conv_nhwc_blas", FAMILY, frozenset({"ConvNHWC"}), _root, _check_conv, _conv)


# ---------------------------------------------------------------- epilogues

def _match_bias(node: Node, view: View) -> Match | None:
    for value in node.inputs[:2]:
        mm = view.producer(value, OP)
        if mm is not None and len(node.inputs) == 2:
            return (mm, node)
    return None


def _check_bias(m: Match, view: View) -> str | None:
    mm, add = m
    if len(mm.inputs) > 2 and mm.inputs[2]:
        return "the BlasMatMul already adds a bias"
    if mm.attr("relu", 0):
        return "the BlasMatMul applies ReLU before the Add"
    reason = view.only_feeds(mm, add)
    if reason:
        return reason
    y = view.shape(mm.outputs[0])
    if y is None or view.shape(add.outputs[0]) != y:
        return "the Add broadcasts beyond the product's shape"
    other = add.inputs[1] if add.inputs[0] == mm.outputs[0] else add.inputs[0]
    bias = column_bias(view, other, y[-1], len(y))
    return bias if isinstance(bias, str) else None


def _fold_bias(m: Match, view: View) -> Replacement:
    mm, add = m
    other = add.inputs[1] if add.inputs[0] == mm.outputs[0] else add.inputs[0]
    y = view.shape(mm.outputs[0])
    column = column_bias(view, other, y[-1], len(y))
    if view.tensor(other).shape == column.shape and view.tensor(other).dtype == column.dtype:
        return Replacement(nodes=(mm.replace(inputs=mm.inputs[:2] + (other,), outputs=add.outputs),))
    bias = view.fresh(other + "_col")
    node = mm.replace(inputs=mm.inputs[:2] + (bias,), outputs=add.outputs)
    return Replacement(nodes=(node,), tensors={bias: column})


def _match_relu(node: Node, view: View) -> Match | None:
    mm = view.producer(node.inputs[0], OP)
    return (mm, node) if mm is not None else None


def _check_relu(m: Match, view: View) -> str | None:
    mm, relu = m
    return "the BlasMatMul already applies ReLU" if mm.attr("relu", 0) else view.only_feeds(mm, relu)


def _fold_relu(m: Match, view: View) -> Replacement:
    mm, relu = m
    attrs = tuple(sorted({**dict(mm.attrs), "relu": 1}.items()))
    return Replacement(nodes=(mm.replace(outputs=relu.outputs, attrs=attrs),))


BLAS_BIAS = Rule("blas_bias", FAMILY, frozenset({"Add"}), _match_bias, _check_bias, _fold_bias)
BLAS_RELU = Rule("blas_relu", FAMILY, frozenset({"Relu"}), _match_relu, _check_relu, _fold_relu)


# ---------------------------------------------------------------- rule sets

def _one_thread(rule: Rule) -> Rule:
    """`rule` with the product run whole on the calling thread (split=0) instead of over XLA's threads."""
    def rewrite(m: Match, view: View) -> Replacement:
        done = rule.rewrite(m, view)
        nodes = tuple(n.replace(attrs=tuple(sorted({**dict(n.attrs), "split": 0}.items()))) if n.op_type == OP else n
                      for n in done.nodes)
        return dataclasses.replace(done, nodes=nodes)

    return Rule(f"{rule.name}_1t", FAMILY, rule.op_types, rule.match, rule.check, rewrite)


_SPLIT = (MATMUL_BLAS, GEMM_BLAS, CONV_NHWC_BLAS)
BLAS_RULES: dict[str, Rule] = {rule.name: rule for rule in _SPLIT + tuple(_one_thread(r) for r in _SPLIT)}

# Per root op type, the BLAS forms a node of that type may take (besides staying as it is).
BLAS_ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "MatMul": ("matmul_blas", "matmul_blas_1t"), "Gemm": ("gemm_blas", "gemm_blas_1t"),
    "ConvNHWC": ("conv_nhwc_blas", "conv_nhwc_blas_1t"),
}

BLAS_EPILOGUE = RuleSet("blas_epilogue", (BLAS_BIAS, BLAS_RELU))
BLAS = RuleSet("blas", _SPLIT + BLAS_EPILOGUE.rules)
