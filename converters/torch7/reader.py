"""A reader for Lua Torch7's binary serialization format (``torch.save(file, object)``).

The format is a stream of tagged objects. Every object starts with a 32-bit tag:

==== ========================= =====================================================================
tag  type                      payload
==== ========================= =====================================================================
0    nil                       nothing
1    number                    float64
2    string                    int32 length, bytes
3    table                     int32 reference id, then (if new) int32 count and count key/value pairs
4    torch object              int32 reference id, then (if new) version string, class name, contents
5    boolean                   int32
6-8  function                  int32 reference id, then (if new) dumped bytecode and upvalues
==== ========================= =====================================================================

Tables and torch objects are written once and referred to by id afterwards, so shared and cyclic
references come back as the same Python object. Tensors and storages are written with C ``long`` sizes,
which are 8 bytes on 64-bit Linux and macOS builds and 4 bytes on Windows builds. ``read_t7`` detects the
width by parsing with 8 bytes first and falling back to 4 when the stream does not parse.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters.errors import ConversionError

logger = logging.getLogger(__name__)

TAG_NIL, TAG_NUMBER, TAG_STRING, TAG_TABLE, TAG_TORCH, TAG_BOOLEAN = 0, 1, 2, 3, 4, 5
TAG_FUNCTION, TAG_RECUR_FUNCTION, TAG_LEGACY_RECUR_FUNCTION = 6, 7, 8

# Element type of each tensor and storage class; the Cuda classes are read into CPU arrays.
ELEMENT_TYPES = {
    "Double": np.float64,
    "Float": np.float32,
    "Half": np.float16,
    "Byte": np.uint8,
    "Char": np.int8,
    "Short": np.int16,
    "Int": np.int32,
    "Long": np.int64,
}
CUDA_ELEMENT_TYPES = {"": np.float32, **ELEMENT_TYPES}

# A storage or tensor larger than this many elements cannot be real (2**40 floats is 4 TiB): it means the
# stream is being read with the wrong ``long`` width.
MAX_ELEMENTS = 1 << 40


class T7FormatError(ConversionError, ValueError):
    """The bytes are not a Torch7 serialized object, or are truncated."""


@dataclass(eq=False)
class T7Table:
    """A Lua table. Hashable by identity, because Lua tables can be keys of other tables."""

    items: dict[Any, Any] = field(default_factory=dict)

    def get(self, key: Any, default: Any = None) -> Any:
        return self.items.get(key, default)

    def sequence(self) -> list[Any]:
        """Return the values at keys 1, 2, ... up to the first missing key (Lua's array part)."""
        values = []
        index = 1
        while index in self.items or float(index) in self.items:
            values.append(self.items.get(index, self.items.get(float(index))))
            index += 1
        return values

    def __hash__(self) -> int:
        return id(self)


@dataclass(eq=False)
class T7Object:
    """A torch object of a class that is not a tensor or storage (an ``nn`` module, for instance)."""

    class_name: str
    contents: Any

    def field(self, name: str, default: Any = None) -> Any:
        """Return the field ``name`` of an object whose contents are a table."""
        if isinstance(self.contents, T7Table):
            return self.contents.get(name, default)
        return default

    def __hash__(self) -> int:
        return id(self)


@dataclass(eq=False)
class T7Function:
    """A serialized Lua function, kept as opaque bytecode."""

    bytecode: bytes
    upvalues: Any


@dataclass
class T7Storage:
    """A storage: a flat array of elements."""

    class_name: str
    data: np.ndarray


class _Stream:
    def __init__(self, data: bytes, long_size: int) -> None:
        self.data = data
        self.position = 0
        self.long_size = long_size
        self.memo: dict[int, Any] = {}

    def take(self, count: int) -> bytes:
        end = self.position + count
        if count < 0 or end > len(self.data):
            raise T7FormatError(f"unexpected end of data at byte {self.position} (needed {count} more bytes)")
        chunk = self.data[self.position:end]
        self.position = end
        return chunk

    def int32(self) -> int:
        return struct.unpack("<i", self.take(4))[0]

    def long(self) -> int:
        return struct.unpack("<q" if self.long_size == 8 else "<i", self.take(self.long_size))[0]

    def float64(self) -> float:
        return struct.unpack("<d", self.take(8))[0]

    def string(self) -> bytes:
        length = self.int32()
        if length < 0:
            raise T7FormatError(f"negative string length {length} at byte {self.position - 4}")
        return self.take(length)


def _decode(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _read_object(stream: _Stream) -> Any:
    tag = stream.int32()
    if tag == TAG_NIL:
        return None
    if tag == TAG_NUMBER:
        value = stream.float64()
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if tag == TAG_STRING:
        return _decode(stream.string())
    if tag == TAG_BOOLEAN:
        return stream.int32() == 1
    if tag in (TAG_TABLE, TAG_TORCH, TAG_FUNCTION, TAG_RECUR_FUNCTION, TAG_LEGACY_RECUR_FUNCTION):
        reference = stream.int32()
        if reference in stream.memo:
            return stream.memo[reference]
        if tag == TAG_TABLE:
            return _read_table(stream, reference)
        if tag == TAG_TORCH:
            return _read_torch(stream, reference)
        return _read_function(stream, reference)
    raise T7FormatError(f"unknown object tag {tag} at byte {stream.position - 4}; this is not a Torch7 binary file")


def _read_table(stream: _Stream, reference: int) -> T7Table:
    table = T7Table()
    stream.memo[reference] = table  # registered before the contents, so cycles resolve to this table
    count = stream.int32()
    if count < 0:
        raise T7FormatError(f"negative table size {count} at byte {stream.position - 4}")
    for _ in range(count):
        key = _read_object(stream)
        table.items[key] = _read_object(stream)
    return table


def _read_function(stream: _Stream, reference: int) -> T7Function:
    function = T7Function(b"", None)
    stream.memo[reference] = function
    function.bytecode = stream.string()
    function.upvalues = _read_object(stream)
    return function


def _element_type(class_name: str, kind: str) -> np.dtype | None:
    """Return the element type of ``torch.<Type><kind>`` or ``torch.Cuda<Type><kind>``, else None."""
    if not class_name.startswith("torch.") or not class_name.endswith(kind):
        return None
    middle = class_name[len("torch."):-len(kind)]
    if middle.startswith("Cuda"):
        dtype = CUDA_ELEMENT_TYPES.get(middle[len("Cuda"):])
    else:
        dtype = ELEMENT_TYPES.get(middle)
    return np.dtype(dtype) if dtype is not None else None


def _read_torch(stream: _Stream, reference: int) -> Any:
    version_or_name = _decode(stream.string())
    if isinstance(version_or_name, str) and version_or_name.startswith("V "):
        class_name = _decode(stream.string())
    else:
        class_name = version_or_name  # version 0 files write the class name directly
    if not isinstance(class_name, str):
        raise T7FormatError(f"class name at byte {stream.position} is not text")

    storage_type = _element_type(class_name, "Storage")
    if storage_type is not None:
        storage = _read_storage(stream, class_name, storage_type)
        stream.memo[reference] = storage
        return storage
    tensor_type = _element_type(class_name, "Tensor")
    if tensor_type is not None:
        tensor = _read_tensor(stream)
        stream.memo[reference] = tensor
        return tensor

    instance = T7Object(class_name, None)
    stream.memo[reference] = instance
    instance.contents = _read_object(stream)
    return instance


def _read_storage(stream: _Stream, class_name: str, dtype: np.dtype) -> T7Storage:
    size = stream.long()
    if size < 0 or size > MAX_ELEMENTS:
        raise T7FormatError(f"storage size {size} of {class_name} at byte {stream.position} is impossible")
    raw = stream.take(size * dtype.itemsize)
    return T7Storage(class_name, np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype))


def _read_tensor(stream: _Stream) -> np.ndarray | None:
    dimensions = stream.int32()
    if dimensions < 0 or dimensions > 64:
        raise T7FormatError(f"tensor with {dimensions} dimensions at byte {stream.position - 4}")
    sizes = [stream.long() for _ in range(dimensions)]
    strides = [stream.long() for _ in range(dimensions)]
    offset = stream.long() - 1  # Lua offsets start at 1
    storage = _read_object(stream)
    if any(size < 0 or size > MAX_ELEMENTS for size in sizes) or offset < -1:
        raise T7FormatError(f"tensor sizes {sizes} or offset {offset + 1} are impossible")
    if dimensions == 0 or storage is None:
        return None  # an empty tensor, such as an unallocated gradWeight
    if not isinstance(storage, T7Storage):
        raise T7FormatError(f"tensor storage is a {type(storage).__name__}, not a storage")
    data = storage.data
    count = int(np.prod(sizes))
    if count == 0:
        return np.zeros(sizes, dtype=data.dtype)
    last = offset + sum((size - 1) * stride for size, stride in zip(sizes, strides))
    if offset < 0 or last >= data.size or any(stride < 0 for stride in strides):
        raise T7FormatError(f"tensor of size {sizes}, stride {strides} and offset {offset + 1} does not fit its "
                            f"storage of {data.size} elements")
    view = np.lib.stride_tricks.as_strided(data[offset:], shape=sizes,
                                           strides=[stride * data.itemsize for stride in strides])
    return np.array(view)  # a copy, so later views of the same storage stay independent


def read_t7_bytes(data: bytes, long_size: int | None = None) -> tuple[Any, int]:
    """Parse ``data`` and return the object and the ``long`` width (4 or 8) that parsed it."""
    widths = (long_size,) if long_size else (8, 4)
    errors = []
    for width in widths:
        stream = _Stream(data, width)
        try:
            value = _read_object(stream)
        except (T7FormatError, struct.error, ValueError, MemoryError) as error:
            errors.append(f"with {width}-byte long: {error}")
            continue
        if stream.position != len(data):
            errors.append(f"with {width}-byte long: {len(data) - stream.position} bytes left after the object")
            continue
        return value, width
    raise T7FormatError("not a readable Torch7 binary file (" + "; ".join(errors) + ")")


def read_t7(path: str | Path, long_size: int | None = None) -> Any:
    """Read the Torch7 binary file at ``path``; ``long_size`` forces 4 or 8 instead of detecting it."""
    path = Path(path)
    try:
        value, width = read_t7_bytes(path.read_bytes(), long_size)
    except T7FormatError as error:
        raise T7FormatError(f"{path}: {error}") from None
    logger.debug("read %s with %d-byte long", path, width)
    return value
