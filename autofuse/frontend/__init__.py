"""The ONNX front end: the only package that imports `onnx` protobufs."""
from autofuse.frontend.importer import import_model
from autofuse.frontend.loader import read_model, read_model_bytes

__all__ = ["import_model", "read_model", "read_model_bytes"]
