"""Read a Caffe prototxt (text format) and the weight blobs of a caffemodel (binary format).

The caffemodel reader walks the protobuf wire format itself at the two outer levels (network, layer, blob)
over a memory map of the file, and parses only the small fields (names, types, shapes) with protobuf. Packed
float data becomes a ``numpy`` view of the mapped bytes, so a 500 MB file never turns into Python floats
and is never held twice.
"""

from __future__ import annotations

import logging
import mmap
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from converters.caffe import proto
from converters.caffe.errors import CaffeFormatError

logger = logging.getLogger(__name__)

# Fields that only Caffe forks define, keyed by (message, field), with the fork that defines them.
FORK_FIELDS = {
    ("PoolingParameter", "ceil_mode"): "Caffe forks built on the unmerged BVLC pull request #3057 "
    "(stock Caffe rounds pooling up unless round_mode: FLOOR is set)",
    ("PoolingParameter", "torch_pooling"): "the Caffe fork of the DeepLab authors",
    ("LayerParameter", "bn_param"): "the 'BN' layer of SegNet's caffe-segnet and similar forks",
    ("LayerParameter", "interp_param"): "the 'Interp' layer of the DeepLab and PSPNet Caffe forks",
    ("LayerParameter", "upsample_param"): "the 'Upsample' layer of SegNet's caffe-segnet",
    ("LayerParameter", "permute_param"): "the SSD Caffe fork (weiliu89/caffe)",
    ("LayerParameter", "prior_box_param"): "the SSD Caffe fork (weiliu89/caffe)",
    ("LayerParameter", "detection_output_param"): "the SSD Caffe fork (weiliu89/caffe)",
    ("LayerParameter", "norm_param"): "the SSD Caffe fork (weiliu89/caffe)",
    ("LayerParameter", "roi_pooling_param"): "the Fast/Faster R-CNN Caffe forks",
    ("LayerParameter", "proposal_param"): "the Faster R-CNN Caffe forks",
}

# Layer parameters of stock Caffe that nstzoo does not model: their layer types are not converted, so a
# prototxt with them is parsed again with unknown fields skipped, and the layer type is reported later.
UNMODELLED_BVLC_PARAMS = {
    "argmax_param", "contrastive_loss_param", "dummy_data_param", "embed_param", "exp_param",
    "hdf5_data_param", "hdf5_output_param", "hinge_loss_param", "infogain_loss_param", "log_param",
    "mvn_param", "parameter_param", "python_param", "recurrent_param", "reduction_param", "spp_param",
    "swish_param", "threshold_param", "tile_param", "window_data_param", "clip_param",
}

_UNKNOWN_FIELD = re.compile(r'Message type "caffe\.(\w+)" has no field named "(\w+)"')


def read_prototxt(path: str | Path) -> "proto.NetParameter":
    """Parse the network description at ``path``; raise ``CaffeFormatError`` naming any fork-only field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CaffeFormatError(f"{path}: not a text prototxt ({error}); pass the deploy .prototxt, not the .caffemodel") from error
    return parse_prototxt(text, str(path))


def parse_prototxt(text: str, source: str = "<prototxt>") -> "proto.NetParameter":
    """Parse prototxt ``text``; ``source`` names it in errors."""
    net = proto.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as error:
        match = _UNKNOWN_FIELD.search(str(error))
        if match is None:
            raise CaffeFormatError(f"{source}: invalid prototxt: {error}") from error
        message, field_name = match.groups()
        fork = FORK_FIELDS.get((message, field_name))
        if fork:
            raise CaffeFormatError(
                f"{source}: field '{field_name}' of {message} comes from {fork}, not from BVLC Caffe; "
                f"nstzoo reads BVLC Caffe models only. Remove the field if the stock meaning fits ({error})"
            ) from error
        if message in ("LayerParameter", "V1LayerParameter") and field_name in UNMODELLED_BVLC_PARAMS:
            net = proto.NetParameter()
            text_format.Parse(text, net, allow_unknown_field=True)
        else:
            raise CaffeFormatError(
                f"{source}: field '{field_name}' of {message} is not in BVLC Caffe's caffe.proto as nstzoo "
                f"reads it; it probably comes from a Caffe fork, which nstzoo does not support ({error})"
            ) from error
    if len(net.layer) and len(net.layers):
        raise CaffeFormatError(
            f"{source}: the network mixes V2 'layer' and V1 'layers' entries ({len(net.layer)} and "
            f"{len(net.layers)}); Caffe rejects such files too. Use one form throughout"
        )
    return net


# --- caffemodel --------------------------------------------------------------------------------------


@dataclass
class CaffeWeights:
    """The blobs of a caffemodel, by layer name, each a float32 array in the blob's declared shape."""

    blobs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    is_v1: bool = False
    net_name: str = ""


WIRE_VARINT, WIRE_FIXED64, WIRE_LENGTH, WIRE_FIXED32 = 0, 1, 2, 5


class _Wire:
    """Walks protobuf fields in ``buffer[start:end]``; every offset is absolute in the file."""

    def __init__(self, buffer: memoryview, source: str) -> None:
        self.buffer = buffer
        self.source = source

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            if pos >= end:
                raise self.truncated(pos, "a varint runs past the end of its message")
            byte = self.buffer[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result, pos
            shift += 7
            if shift > 63:
                raise CaffeFormatError(f"{self.source}: corrupt varint at byte {pos}; the file is not a caffemodel")

    def truncated(self, pos: int, what: str) -> CaffeFormatError:
        return CaffeFormatError(
            f"{self.source}: truncated or corrupt caffemodel: {what} (byte {pos} of {len(self.buffer)}); "
            "download the file again and check its hash"
        )

    def fields(self, start: int, end: int):
        """Yield ``(number, wire_type, tag_start, value_start, value_end)`` for each field."""
        pos = start
        while pos < end:
            tag_start = pos
            key, pos = self.varint(pos, end)
            number, wire_type = key >> 3, key & 7
            if number == 0:
                raise CaffeFormatError(f"{self.source}: corrupt caffemodel: field number 0 at byte {tag_start}")
            if wire_type == WIRE_VARINT:
                _, value_end = self.varint(pos, end)
            elif wire_type == WIRE_FIXED64:
                value_end = pos + 8
            elif wire_type == WIRE_FIXED32:
                value_end = pos + 4
            elif wire_type == WIRE_LENGTH:
                length, pos = self.varint(pos, end)
                value_end = pos + length
            else:
                raise CaffeFormatError(
                    f"{self.source}: corrupt caffemodel: wire type {wire_type} at byte {tag_start}; "
                    "the file is not a caffemodel (a prototxt or an HTML page?)"
                )
            if value_end > end:
                raise self.truncated(tag_start, f"field {number} needs {value_end - pos} bytes, {end - pos} remain")
            yield number, wire_type, tag_start, pos, value_end
            pos = value_end


def read_caffemodel(path: str | Path) -> CaffeWeights:
    """Read the layer names, types and weight blobs of the caffemodel at ``path``."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise CaffeFormatError(f"{path}: the caffemodel is empty; download it again")
    with open(path, "rb") as handle:
        # A private (copy-on-write) map: arrays over it are writable for torch, and nothing is copied
        # unless written.
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    wire = _Wire(memoryview(mapped), str(path))
    weights = CaffeWeights()
    for number, wire_type, tag_start, start, end in wire.fields(0, size):
        if number == 1 and wire_type == WIRE_LENGTH:
            weights.net_name = bytes(wire.buffer[start:end]).decode("utf-8", "replace")
        elif number in (100, 2) and wire_type == WIRE_LENGTH:
            _read_layer(wire, mapped, start, end, is_v1=number == 2, weights=weights)
    if not weights.types:
        raise CaffeFormatError(f"{path}: no layers found; the file is not a caffemodel (is it a prototxt?)")
    logger.debug("read %d layers from %s", len(weights.types), path)
    return weights


def _read_layer(wire: _Wire, mapped: mmap.mmap, start: int, end: int, is_v1: bool, weights: CaffeWeights) -> None:
    blobs_field = 6 if is_v1 else 7
    small = bytearray()
    blob_ranges = []
    for number, _, tag_start, value_start, value_end in wire.fields(start, end):
        if is_v1 and number == 1:
            raise CaffeFormatError(
                f"{wire.source}: the caffemodel is in Caffe's V0 format (before 2014), which nstzoo does not read; "
                "upgrade it with Caffe's upgrade_net_proto_binary tool"
            )
        if number == blobs_field:
            blob_ranges.append((value_start, value_end))
        else:
            small += wire.buffer[tag_start:value_end]
    header = proto.FastV1Layer() if is_v1 else proto.FastLayer()
    header.ParseFromString(bytes(small))
    name = header.name
    kind = proto.v1_type_name(header.type) if is_v1 else header.type
    if name in weights.types:
        logger.warning("%s: layer '%s' appears twice; the last copy's blobs are used", wire.source, name)
    weights.is_v1 = weights.is_v1 or is_v1
    weights.types[name] = kind
    weights.blobs[name] = [_read_blob(wire, mapped, s, e, name) for s, e in blob_ranges]


def _read_blob(wire: _Wire, mapped: mmap.mmap, start: int, end: int, layer: str) -> np.ndarray:
    small = bytearray()
    data: np.ndarray | None = None
    pos_fields = wire.fields(start, end)
    for number, wire_type, tag_start, value_start, value_end in pos_fields:
        if number == 5 and wire_type == WIRE_LENGTH:  # packed float data
            data = np.frombuffer(mapped, dtype="<f4", count=(value_end - value_start) // 4, offset=value_start)
        elif number == 5 and wire_type == WIRE_FIXED32:  # old files: one tagged float per value
            data, skip_to = _unpacked_floats(wire, mapped, tag_start, end)
            # Continue the walk after the run of tagged floats.
            pos_fields = wire.fields(skip_to, end)
            for rest in pos_fields:
                number, wire_type, tag_start, value_start, value_end = rest
                small += wire.buffer[tag_start:value_end]
            break
        elif number == 8 and wire_type == WIRE_LENGTH:  # packed double data
            data = np.frombuffer(mapped, dtype="<f8", count=(value_end - value_start) // 8, offset=value_start).astype(np.float32)
        elif number in (6, 9):  # gradients, not needed
            continue
        else:
            small += wire.buffer[tag_start:value_end]
    header = proto.BlobProto()
    header.ParseFromString(bytes(small))
    if header.HasField("shape"):
        shape = tuple(int(dim) for dim in header.shape.dim)
    else:
        shape = tuple(int(dim) for dim in (header.num, header.channels, header.height, header.width))
    count = int(np.prod(shape)) if shape else 1
    if data is None:
        data = np.zeros(0, dtype=np.float32)
    if data.size != count:
        raise CaffeFormatError(
            f"{wire.source}: blob of layer '{layer}' declares shape {list(shape)} ({count} values) but contains "
            f"{data.size} values; the caffemodel is corrupt or truncated"
        )
    return data.reshape(shape)


def _unpacked_floats(wire: _Wire, mapped: mmap.mmap, tag_start: int, end: int) -> tuple[np.ndarray, int]:
    """Read a run of non-packed float fields (tag byte 0x2D, then 4 bytes) starting at ``tag_start``."""
    run = (end - tag_start) // 5
    records = np.frombuffer(mapped, dtype=np.uint8, count=run * 5, offset=tag_start).reshape(run, 5)
    not_tag = np.flatnonzero(records[:, 0] != 0x2D)
    if not_tag.size:
        run = int(not_tag[0])
    values = np.ascontiguousarray(records[:run, 1:]).view("<f4").reshape(-1)
    return values, tag_start + run * 5


def read_blobproto(path: str | Path) -> np.ndarray:
    """Read a single BlobProto file, such as a ``mean.binaryproto``, as a float32 array in its own shape.

    A mean file is in the network's channel order (BGR for most Caffe models) and pixel scale (0-255);
    its per-channel mean is ``array.reshape(-1, C, H, W).mean(axis=(0, 2, 3))``.
    """
    path = Path(path)
    blob = proto.BlobProto()
    try:
        blob.ParseFromString(path.read_bytes())
    except Exception as error:  # protobuf raises its own DecodeError
        raise CaffeFormatError(f"{path}: not a BlobProto file ({error})") from error
    if blob.HasField("shape"):
        shape = tuple(int(dim) for dim in blob.shape.dim)
    else:
        shape = (blob.num, blob.channels, blob.height, blob.width)
    data = np.asarray(blob.data, dtype=np.float32) if len(blob.data) else np.asarray(blob.double_data, dtype=np.float32)
    if data.size != int(np.prod(shape)):
        raise CaffeFormatError(f"{path}: the blob declares shape {list(shape)} but contains {data.size} values")
    return data.reshape(shape)
