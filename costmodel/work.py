"""What an algorithm choice does to a node's work: the products it runs and the memory it moves.

The graph features give a node's shapes and the FLOPs its op defines; the forms
a convolution or product can take (`autofuse.rewrite.algorithm`, `.packed`)
change how that work is done. Every such node runs, in the end, one or more
matrix products; this module names them (how many, of what M x K x N), and the
scratch memory and weight bytes the form adds:

* a direct convolution (XLA's, or the packed kernel that gathers patches while
  packing): one product of M = N*Ho*Wo, K = kh*kw*Cin/group, N = Cout;
* im2col: the same product, after writing and reading a patch matrix;
* Winograd F(m x m, 3x3): (m+2)^2 products of M = tiles, K = Cin, N = Cout,
  with input and output tiles through scratch memory and a weight (m+2)^2/9 the
  kernel's size; `winograd_3x3` is F(4x4) or F(2x2) by the tile count, exactly
  as the rule picks; the packed Winograd kernel is F(2x2);
* depthwise: C products of M = N*Ho*Wo, K = kh*kw, N = 1;
* MatMul and Gemm: the product of the last two dims, batched over the others.

These are estimates of work, not of time: the network learns what they cost.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Sequence

from autofuse.ops.internal import winograd_tiles
from autofuse.rewrite.algorithm import tile_by_size

PACKED_WINOGRAD_TILE = 2  # PackedWinogradNHWC computes F(2x2, 3x3)


class Work(NamedTuple):
    """The matrix products a node runs under its algorithm, and the memory the algorithm adds."""

    products: float      # how many independent products (a batch)
    m: float
    k: float
    n: float
    scratch_bytes: float  # written and read again: patches, Winograd tiles
    weight_bytes: float   # the weight as the algorithm stores it
    tile: int             # Winograd output tile (0: not Winograd)


def _ints(shape: Any) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else 1 for d in (shape or [])]


def winograd_tile(algorithm: str, out_shape: Sequence[Any]) -> int:
    """The Winograd output tile `algorithm` computes on a ConvNHWC of `out_shape` (0 if none)."""
    if algorithm == "conv_winograd_packed":
        return PACKED_WINOGRAD_TILE
    if algorithm.startswith("winograd_f") and algorithm[10:11].isdigit():
        return int(algorithm[10])
    if algorithm == "winograd_3x3":
        return tile_by_size(tuple(_ints(out_shape) + [1, 1, 1]))
    return 0


def resolved_algorithm(node: Mapping[str, Any], algorithm: str) -> str:
    """The rule that runs: on a ConvNHWC, `winograd_3x3` named after the tile it picks; any other name as it is."""
    if algorithm == "winograd_3x3" and node.get("op") == "ConvNHWC":
        tile = winograd_tile(algorithm, node.get("out_shape") or [])
        return f"winograd_f{tile}x{tile}_3x3"
    return algorithm


def node_work(node: Mapping[str, Any], algorithm: str) -> Work | None:
    """The products `node` runs under `algorithm`; None for ops that run no matrix product."""
    op = str(node.get("op", ""))
    shapes = [_ints(s) for s in node.get("in_shapes") or []]
    out = _ints(node.get("out_shape"))
    if len(shapes) < 2 or not shapes[0] or not shapes[1]:
        return None
    x, w = shapes[0], shapes[1]
    if op == "ConvNHWC" and len(x) == 4 and len(w) == 4 and len(out) == 4:
        return _conv_work(node, algorithm, x, w, out)
    if op in ("MatMul", "Gemm", "MatMulTransB"):
        transposed = op == "MatMulTransB" or bool((node.get("attrs") or {}).get("transB"))
        k = x[-1]
        n = (w[-2] if transposed else w[-1]) if len(w) >= 2 else 1
        m = x[-2] if len(x) >= 2 else 1
        products = math.prod(out[:-2]) if len(out) > 2 else 1
        return Work(products, m, k, n, 0.0, 4.0 * math.prod(w), 0)
    return None


def _conv_work(node: Mapping[str, Any], algorithm: str, x: list[int], w: list[int], out: list[int]) -> Work:
    batch, ho, wo, cout = out
    kh, kw, cin_per_group = w[0], w[1], w[2]
    group = int((node.get("attrs") or {}).get("group") or 1)
    weight = 4.0 * math.prod(w)
    if algorithm == "depthwise_conv_nhwc" or (group > 1 and cin_per_group == 1):
        return Work(cout, batch * ho * wo, kh * kw, 1, 0.0, weight, 0)
    tile = winograd_tile(algorithm, out)
    if tile:
        alpha = (tile + 2) ** 2
        tiles = batch * winograd_tiles(ho, tile) * winograd_tiles(wo, tile)
        scratch = 2.0 * 4.0 * tiles * alpha * (x[3] + cout)
        return Work(alpha, tiles, x[3], cout, scratch, weight * alpha / 9.0, tile)
    rows, depth = batch * ho * wo, kh * kw * cin_per_group
    scratch = 2.0 * 4.0 * rows * depth if "im2col" in algorithm else 0.0
    return Work(group, rows, depth, cout // max(group, 1), scratch, weight, 0)
