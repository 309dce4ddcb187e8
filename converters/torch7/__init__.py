"""Torch7 ``.t7`` files: a reader and writer of the binary format, and the ``nn`` module converter."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

from converters.errors import ConversionError, UnsupportedLayerError
from converters.graph import GraphSpec
from converters.torch7.modules import GraphBuilder, short_class_name
from converters.torch7.reader import T7FormatError, T7Object, T7Table, read_t7

logger = logging.getLogger(__name__)

INPUT_NAME = "input"

__all__ = ["T7FormatError", "convert_torch7", "find_model", "read_t7"]


def find_model(value: Any, path: Path) -> T7Object:
    """Return the network stored in a .t7 file: the object itself, or the ``model`` entry of a table.

    fast-neural-style and similar projects save ``{model = net, opt = options}`` instead of the bare module.
    """
    if isinstance(value, T7Object):
        return value
    if isinstance(value, T7Table):
        for key in ("model", "net", "network"):
            candidate = value.get(key)
            if isinstance(candidate, T7Object):
                logger.info("%s: using the '%s' entry of the saved table", path, key)
                return candidate
        keys = ", ".join(repr(key) for key in list(value.items)[:10])
        raise ConversionError(f"{path} contains a table without a 'model' module (keys: {keys}); "
                              "save the network itself with torch.save")
    raise ConversionError(f"{path} contains a {type(value).__name__}, not a Torch7 nn module")


def _first_input_planes(module: T7Object) -> int:
    """Return nInputPlane of the first convolution in module order, or 0 if there is none."""
    stack: list[Any] = [module]
    while stack:
        current = stack.pop(0)
        if not isinstance(current, T7Object):
            continue
        planes = current.field("nInputPlane")
        if "Convolution" in current.class_name and planes:
            return int(planes)
        children = current.field("modules")
        if isinstance(children, T7Table):
            stack[0:0] = children.sequence()
    return 0


def convert_torch7(path: Path, options: Any) -> tuple[GraphSpec, dict[str, torch.Tensor]]:
    """Convert the Torch7 network saved at ``path`` into a graph spec and weights.

    Nodes are named by module path (``3``, ``5.2``). Every module type nstzoo cannot convert is listed in
    one ``UnsupportedLayerError``.
    """
    path = Path(path)
    model = find_model(read_t7(path, (options.extra or {}).get("long_size")), path)
    builder = GraphBuilder()
    outputs = builder.walk(model, [INPUT_NAME], "")
    if builder.unsupported:
        raise UnsupportedLayerError(builder.unsupported, str(path))
    if not builder.nodes:
        raise ConversionError(f"{path}: the network {model.class_name} has no layers to convert")
    shape = list(options.input_shape) if options.input_shape else [1, _first_input_planes(model), 0, 0]
    spec = GraphSpec(
        nodes=builder.nodes,
        inputs={INPUT_NAME: shape},
        outputs=list(outputs),
        metadata={"source_format": "torch7", "source_file": path.name,
                  "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                  "root_class": short_class_name(model.class_name)},
    )
    spec.validate()
    logger.info("converted %s: %d layers from %s", path.name, len(spec.nodes), model.class_name)
    return spec, builder.weights
