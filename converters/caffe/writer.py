"""Write caffemodels and mean-file blobs, for tests and benchmarks that build their own Caffe networks.

The layers come from a parsed prototxt. The blobs go straight from ``numpy`` arrays into the wire format,
one array at a time, so a 500 MB caffemodel is never built as one message in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

from converters.caffe import proto
from converters.caffe.reader import parse_prototxt

WIRE_LENGTH = 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def _blob_parts(array: np.ndarray, v1: bool, packed: bool) -> list[bytes | memoryview]:
    """Return the encoded fields of one BlobProto, the float data last and uncopied when packed."""
    array = np.ascontiguousarray(array, dtype="<f4")
    blob = proto.BlobProto()
    if v1:
        dims = (1,) * (4 - array.ndim) + tuple(array.shape)
        if len(dims) != 4:
            raise ValueError(f"a V1 blob has at most 4 dims, got shape {list(array.shape)}")
        blob.num, blob.channels, blob.height, blob.width = dims
    else:
        blob.shape.dim.extend(array.shape)
    parts: list[bytes | memoryview] = [blob.SerializeToString()]
    if packed:
        data = memoryview(array.reshape(-1)).cast("B")
        parts += [_key(5, WIRE_LENGTH) + _varint(data.nbytes), data]
    else:
        records = np.empty((array.size, 5), dtype=np.uint8)
        records[:, 0] = 0x2D  # field 5, wire type 5 (fixed32)
        records[:, 1:] = array.reshape(-1, 1).view(np.uint8).reshape(-1, 4)
        parts.append(records.tobytes())
    return parts


def _length(parts: list[bytes | memoryview]) -> int:
    return sum(part.nbytes if isinstance(part, memoryview) else len(part) for part in parts)


def _write_layer(handle: BinaryIO, layer, blobs: list[np.ndarray], v1: bool, packed: bool) -> None:
    layer_copy = type(layer)()
    layer_copy.CopyFrom(layer)
    del layer_copy.blobs[:]
    parts: list[bytes | memoryview] = [layer_copy.SerializeToString()]
    for array in blobs:
        blob_parts = _blob_parts(array, v1, packed)
        parts.append(_key(6 if v1 else 7, WIRE_LENGTH) + _varint(_length(blob_parts)))
        parts.extend(blob_parts)
    handle.write(_key(2 if v1 else 100, WIRE_LENGTH) + _varint(_length(parts)))
    for part in parts:
        handle.write(part)


def write_caffemodel(path: str | Path, prototxt: str, blobs: dict[str, list[np.ndarray]], packed: bool = True) -> Path:
    """Write a caffemodel for the network in ``prototxt`` (its text) with ``blobs`` by layer name.

    The file contains every layer of the prototxt in the prototxt's form (V1 ``layers`` or V2 ``layer``).
    With ``packed=False`` the float data is written as old Caffe versions did, one tagged value at a time.
    """
    net = parse_prototxt(prototxt)
    v1 = bool(net.layers)
    path = Path(path)
    with open(path, "wb") as handle:
        header = proto.NetParameter()
        header.CopyFrom(net)
        del header.layer[:]
        del header.layers[:]
        handle.write(header.SerializeToString())
        for layer in (net.layers if v1 else net.layer):
            _write_layer(handle, layer, blobs.get(layer.name, []), v1, packed)
    return path


def write_blobproto(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as one BlobProto, the form of Caffe's ``mean.binaryproto`` files."""
    path = Path(path)
    with open(path, "wb") as handle:
        for part in _blob_parts(array, v1=False, packed=True):
            handle.write(part)
    return path
