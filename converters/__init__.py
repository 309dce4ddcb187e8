"""Foreign weights to PyTorch: Caffe, Torch7, ONNX and PyTorch files become a graph spec plus safetensors.

This package does not import the download or cache code.
"""

from converters.errors import ConversionError, GraphSpecError, UnknownLayerError, UnsupportedLayerError
from converters.graph import GraphSpec, Node, load_converted, save_converted
from converters.network import GraphNet

__all__ = [
    "ConversionError",
    "GraphNet",
    "GraphSpec",
    "GraphSpecError",
    "Node",
    "UnknownLayerError",
    "UnsupportedLayerError",
    "load_converted",
    "save_converted",
]
