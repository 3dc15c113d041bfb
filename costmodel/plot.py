"""Search-efficiency curves to a PNG: with matplotlib when installed (`autofuse[plot]`),
otherwise a plain raster of the curves (no text) written with numpy and zlib."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

Curves = Mapping[str, tuple[np.ndarray, np.ndarray]]
COLORS = {"gnn": (31, 119, 180), "random": (214, 39, 40), "analytic": (44, 160, 44), "oracle": (127, 127, 127)}


def plot_curves(path: str | Path, panels: Sequence[tuple[str, Curves]]) -> Path:
    """One panel per (title, {ranker: (measurements, latency s)}); latency shown relative to the best."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib
    except ImportError:
        _write_png(path, _raster(panels))
        return path
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (title, curves) in zip(axes.flat, panels):
        best = min(float(v.min()) for _, v in curves.values())
        for name, (x, y) in curves.items():
            ax.plot(x, y / best, label=name, color=np.array(COLORS.get(name, (0, 0, 0))) / 255)
        ax.axhline(1.05, color="gray", lw=0.8, ls="--")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("measurements")
        ax.set_ylabel("latency / best")
        ax.set_ylim(0.98, min(2.0, max(float(np.nanmax(y / best)) for _, y in curves.values()) + 0.02))
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _raster(panels: Sequence[tuple[str, Curves]], size: int = 240) -> np.ndarray:
    """Panels side by side, each curve a coloured polyline (y: latency / best, clipped at 2)."""
    image = np.full((size, size * len(panels), 3), 255, np.uint8)
    for p, (_, curves) in enumerate(panels):
        image[:, p * size] = 0
        image[size - 1, p * size:(p + 1) * size] = 0
        best = min(float(v.min()) for _, v in curves.values())
        x_max = max(float(x.max()) for x, _ in curves.values())
        for name, (x, y) in curves.items():
            xs = np.interp(np.linspace(0, 1, 4 * size), x / x_max, x / x_max)
            ys = np.clip(np.interp(xs, x / x_max, y / best), 1.0, 2.0) - 1.0
            cols = p * size + 1 + (xs * (size - 3)).astype(int)
            rows = (size - 2 - ys * (size - 3)).astype(int)
            image[rows, cols] = COLORS.get(name, (0, 0, 0))
    return image


def _write_png(path: Path, image: np.ndarray) -> None:
    """An 8-bit RGB PNG (filter type 0 on every row)."""
    height, width, _ = image.shape
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
