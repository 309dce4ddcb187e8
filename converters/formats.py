"""One table from source format to converter, and detection of a file's format from its content.

Every converter takes the source path and ``ConvertOptions`` and returns a ``GraphSpec`` with its weights.
"""

from __future__ import annotations

import importlib
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from converters.errors import ConversionError
from converters.graph import GraphSpec

logger = logging.getLogger(__name__)

# "module:function" for each format, imported on first use so a missing optional dependency of one
# format does not break the others.
CONVERTERS = {
    "caffe": "converters.caffe:convert_caffe",
    "torch7": "converters.torch7:convert_torch7",
    "onnx": "converters.onnx:convert_onnx",
    "pytorch": "converters.pytorch:convert_pytorch",
    "safetensors": "converters.pytorch:convert_safetensors",
}

# File name endings used only as a hint when the content alone does not decide (both ONNX and caffemodel
# files are protobuf messages).
EXTENSION_HINTS = {
    ".onnx": "onnx", ".caffemodel": "caffe", ".t7": "torch7", ".pth": "pytorch", ".pt": "pytorch",
    ".safetensors": "safetensors",
}


@dataclass
class ConvertOptions:
    """Options a converter may need besides the weights file."""

    prototxt: Path | None = None
    input_shape: tuple[int, ...] | None = None
    layout: str = ""
    rename_keys: tuple[tuple[str, str], ...] = ()
    extra: dict = field(default_factory=dict)


def convert(fmt: str, path: str | Path, options: ConvertOptions | None = None) -> tuple[GraphSpec, dict[str, torch.Tensor]]:
    """Convert the file at ``path`` in format ``fmt`` to a graph spec and weights."""
    try:
        target = CONVERTERS[fmt]
    except KeyError:
        raise ConversionError(f"unknown format '{fmt}'; known formats: {', '.join(CONVERTERS)}") from None
    module_name, _, function_name = target.partition(":")
    function = getattr(importlib.import_module(module_name), function_name)
    return function(Path(path), options or ConvertOptions())


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    header_length = struct.unpack("<Q", head[:8])[0]
    return 0 < header_length <= size - 8 and head[8:9] == b"{"


def _is_torch7(head: bytes) -> bool:
    if len(head) < 16:
        return False
    tag, reference = struct.unpack("<ii", head[:8])
    if tag == 4 and reference == 1:  # a torch object: version string "V 1" or a class name follows
        length = struct.unpack("<i", head[8:12])[0]
        return 0 < length < 256 and (head[12:15] == b"V 1" or head[12:15].isascii())
    return tag == 3 and reference == 1  # a Lua table, as fast-neural-style saves {model = ..., opt = ...}


def _is_pickle(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _is_onnx(path: Path) -> bool:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - any parse failure means "not ONNX"
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0


def detect_format(path: str | Path, prototxt: str | Path | None = None) -> tuple[str, str]:
    """Return ``(format, reason)`` for the weights file at ``path``, decided by its content.

    The file name's extension is used only when the content is a protobuf message that parses neither as
    an ONNX model nor as what a caffemodel starts with; the returned reason then names the extension.
    """
    path = Path(path)
    with path.open("rb") as handle:
        head = handle.read(64)
    size = path.stat().st_size
    if prototxt is not None:
        return "caffe", "a prototxt was given, so the weights are a caffemodel"
    if head.startswith(b"PK\x03\x04"):
        return "pytorch", "zip archive (torch.save's format since torch 1.6)"
    if _is_pickle(head):
        return "pytorch", "pickle stream (torch.save's legacy format)"
    if _is_safetensors(head, size):
        return "safetensors", "safetensors header"
    if _is_torch7(head):
        return "torch7", "Torch7 binary object header"
    if head[:1] == b"\x08" and _is_onnx(path):
        return "onnx", "protobuf ModelProto with a graph (ONNX)"
    if head[:1] == b"\x0a":
        return "caffe", "protobuf NetParameter (caffemodel); it needs --prototxt"
    hint = EXTENSION_HINTS.get(path.suffix.lower())
    if hint:
        logger.warning("%s: the content does not show its format; going by the extension %s (%s)",
                       path, path.suffix, hint)
        return hint, f"content ambiguous, extension {path.suffix} used as a hint"
    raise ConversionError(
        f"cannot tell the format of {path} from its content (first bytes {head[:8].hex()}); "
        f"pass --format with one of {', '.join(CONVERTERS)}"
    )
