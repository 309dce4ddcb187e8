"""Caffe models to graph specs, without Caffe: prototxt and caffemodel read through ``protobuf``."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from converters.caffe.builder import build_graph
from converters.caffe.errors import CaffeFormatError, CaffeNetError
from converters.caffe.reader import read_caffemodel, read_prototxt
from converters.graph import GraphSpec

logger = logging.getLogger(__name__)

__all__ = ["CaffeFormatError", "CaffeNetError", "convert_caffe", "read_caffemodel", "read_prototxt"]


def convert_caffe(path: Path, options) -> tuple[GraphSpec, dict[str, torch.Tensor]]:
    """Convert the caffemodel at ``path`` with the deploy prototxt ``options.prototxt``.

    ``options.input_shape`` replaces the shape of the first network input, and is required when the
    prototxt takes its input from a Data layer. The weights are views of a memory map of the caffemodel.
    """
    path = Path(path)
    if options.prototxt is None:
        raise CaffeNetError(f"{path}: a caffemodel contains weights only, so the deploy prototxt is missing: pass it with --prototxt DEPLOY.prototxt")
    for role, file in (("caffemodel", path), ("prototxt", Path(options.prototxt))):
        if not file.is_file():
            raise CaffeFormatError(f"{role} {file} not found")
    net = read_prototxt(options.prototxt)
    weights = read_caffemodel(path)
    input_shape = tuple(options.input_shape) if options.input_shape else None
    spec, tensors = build_graph(net, weights, input_shape, str(options.prototxt))
    spec.metadata["source"] = path.name
    logger.info("converted %s: %d layers, %d tensors", path.name, len(spec.nodes), len(tensors))
    return spec, tensors
