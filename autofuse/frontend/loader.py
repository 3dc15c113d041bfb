"""Loading ONNX files safely: external data confined to the model's folder,
the checker, opset conversion for very old models, and shape inference.

Every failure is a `ModelLoadError` whose message starts with the file name.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx.inliner
import onnx.shape_inference
import onnx.version_converter
from onnx import external_data_helper

from autofuse.errors import ModelLoadError

# Files larger than this are refused unless the caller raises the limit.
MAX_MODEL_BYTES = 64 * 1024**3
# Opsets below this are converted up before import (lowerings start here).
MIN_OPSET = 7


def read_model(path: str | os.PathLike, *, max_bytes: int = MAX_MODEL_BYTES) -> onnx.ModelProto:
    """Reads, validates and shape-infers an ONNX file, external data included."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    size = path.stat().st_size
    if size > max_bytes:
        raise ModelLoadError(f"{path}: {size} bytes is over the {max_bytes}-byte limit")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise ModelLoadError(
            f"{path}: not a valid ONNX model (truncated or corrupt file?): {_first_line(error)}"
        ) from None
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path}: the file parsed but holds no graph (truncated or not an ONNX model?)")
    base = path.resolve().parent
    _check_external_data(model, base, path)
    return prepare_proto(model, source=str(path), external_base=base, check_path=path)


def read_model_bytes(data: bytes, *, source: str = "<bytes>") -> onnx.ModelProto:
    """Like `read_model` for an in-memory serialized model (no external data)."""
    try:
        model = onnx.load_model_from_string(data)
    except Exception as error:
        raise ModelLoadError(f"{source}: not a valid ONNX model: {_first_line(error)}") from None
    return prepare_proto(model, source=source)


def prepare_proto(
    model: onnx.ModelProto,
    *,
    source: str,
    external_base: Path | None = None,
    check_path: Path | None = None,
) -> onnx.ModelProto:
    """Checks, converts, inlines local functions, infers shapes, loads external data.

    With `check_path` the checker reads the file itself, which resolves external
    data against the model's folder and works past protobuf's 2 GiB limit.
    """
    try:
        onnx.checker.check_model(str(check_path) if check_path else model)
    except onnx.checker.ValidationError as error:
        raise ModelLoadError(f"{source}: the ONNX checker rejects the model: {_first_line(error)}") from None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as error:
            raise ModelLoadError(
                f"{source}: opset {opset} is too old and could not be converted to {MIN_OPSET}: {_first_line(error)}"
            ) from None
    if model.functions:
        try:
            model = onnx.inliner.inline_local_functions(model)
        except Exception as error:
            raise ModelLoadError(f"{source}: could not inline the model's local functions: {_first_line(error)}") from None
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as error:
        raise ModelLoadError(f"{source}: shape inference failed: {_first_line(error)}") from None
    if external_base is not None and _uses_external_data(model):
        try:
            external_data_helper.load_external_data_for_model(model, str(external_base))
        except Exception as error:
            raise ModelLoadError(f"{source}: could not read external data: {_first_line(error)}") from None
    return model


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(
        external_data_helper.uses_external_data(t)
        for t in external_data_helper._get_all_tensors(model)
    )


def _check_external_data(model: onnx.ModelProto, base: Path, path: Path) -> None:
    """Refuses external-data locations that leave the model's folder."""
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        where = f"{path}: tensor '{tensor.name}' external data '{location}'"
        if not location:
            raise ModelLoadError(f"{where}: no location given")
        if os.path.isabs(location) or location.startswith(("/", "\\")):
            raise ModelLoadError(f"{where}: absolute paths are not allowed")
        if ".." in Path(location).parts:
            raise ModelLoadError(f"{where}: '..' would leave the model's folder")
        target = (base / location).resolve()
        if base != target and base not in target.parents:
            raise ModelLoadError(f"{where}: resolves outside the model's folder (symlink?)")
        if not target.is_file():
            raise ModelLoadError(f"{where}: file not found")


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
