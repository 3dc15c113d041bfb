"""Errors a user can read: each names the file, node, op or flag at fault."""
from __future__ import annotations


class AutofuseError(Exception):
    """Base class for every error autofuse raises on purpose."""


class ModelLoadError(AutofuseError):
    """The ONNX file could not be read, checked or trusted."""


class UnsupportedOpError(AutofuseError):
    """The model uses an op (or an op version) autofuse has no lowering for."""


class LoweringError(AutofuseError):
    """An op's lowering failed for this node's inputs or attributes."""


class ShapeError(AutofuseError):
    """A shape autofuse needs at compile time is missing or dynamic."""


def node_label(node_name: str, op_type: str, source: str = "") -> str:
    """A short, uniform way to name a node in error messages."""
    where = f"{source}: " if source else ""
    name = node_name or "<unnamed>"
    return f"{where}node '{name}' ({op_type})"
