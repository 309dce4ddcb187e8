"""A writer for Torch7's binary serialization format, the inverse of ``converters.torch7.reader``.

nstzoo uses it to build test models, since Lua Torch is not installable today; OpenCV's
``readNetFromTorch`` reads what it writes, which checks both sides against an independent parser.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters.torch7.reader import (
    TAG_BOOLEAN, TAG_NIL, TAG_NUMBER, TAG_STRING, TAG_TABLE, TAG_TORCH, T7Object, T7Table,
)

TYPE_NAMES = {
    np.dtype(np.float64): "Double",
    np.dtype(np.float32): "Float",
    np.dtype(np.float16): "Half",
    np.dtype(np.uint8): "Byte",
    np.dtype(np.int8): "Char",
    np.dtype(np.int16): "Short",
    np.dtype(np.int32): "Int",
    np.dtype(np.int64): "Long",
}


@dataclass(eq=False)
class TensorSpec:
    """A tensor to write: ``data`` viewed with ``sizes``/``strides``/``offset`` (0-based) into ``storage``.

    ``class_name`` overrides the tensor class (``torch.CudaTensor``), ``storage_class`` the storage class.
    Two specs with the same ``storage`` object share one serialized storage.
    """

    storage: np.ndarray
    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int = 0
    class_name: str = ""
    storage_class: str = ""

    @classmethod
    def of(cls, array: np.ndarray, class_name: str = "", storage_class: str = "") -> "TensorSpec":
        array = np.ascontiguousarray(array)
        strides = tuple(stride // array.itemsize for stride in array.strides)
        return cls(array.reshape(-1), tuple(array.shape), strides, 0, class_name, storage_class)


@dataclass(eq=False)
class LongStorage:
    """A ``torch.LongStorage``, used for ``nn.View`` sizes."""

    values: tuple[int, ...]


class T7Writer:
    """Serialize Python values: None, bool, int/float, str, dict/T7Table, T7Object, arrays and TensorSpec."""

    def __init__(self, long_size: int = 8) -> None:
        if long_size not in (4, 8):
            raise ValueError(f"long_size must be 4 or 8, got {long_size}")
        self.long_size = long_size
        self.parts: list[bytes] = []
        self.references: dict[int, int] = {}
        self.keep_alive: list[Any] = []

    def int32(self, value: int) -> None:
        self.parts.append(struct.pack("<i", value))

    def long(self, value: int) -> None:
        self.parts.append(struct.pack("<q" if self.long_size == 8 else "<i", value))

    def string(self, text: str | bytes) -> None:
        raw = text.encode("utf-8") if isinstance(text, str) else text
        self.int32(len(raw))
        self.parts.append(raw)

    def _reference(self, value: Any) -> bool:
        """Write the reference id of ``value``; return True when it was written before."""
        key = id(value)
        if key in self.references:
            self.int32(self.references[key])
            return True
        self.references[key] = len(self.references) + 1
        self.keep_alive.append(value)
        self.int32(self.references[key])
        return False

    def write(self, value: Any) -> None:
        if value is None:
            self.int32(TAG_NIL)
        elif isinstance(value, bool):
            self.int32(TAG_BOOLEAN)
            self.int32(1 if value else 0)
        elif isinstance(value, (int, float)):
            self.int32(TAG_NUMBER)
            self.parts.append(struct.pack("<d", float(value)))
        elif isinstance(value, (str, bytes)):
            self.int32(TAG_STRING)
            self.string(value)
        elif isinstance(value, (dict, T7Table)):
            self._table(value)
        elif isinstance(value, T7Object):
            self.int32(TAG_TORCH)
            if not self._reference(value):
                self.string("V 1")
                self.string(value.class_name)
                self.write(value.contents)
        elif isinstance(value, np.ndarray):
            self.write(TensorSpec.of(value))
        elif isinstance(value, TensorSpec):
            self._tensor(value)
        elif isinstance(value, LongStorage):
            self.int32(TAG_TORCH)
            if not self._reference(value):
                self.string("V 1")
                self.string("torch.LongStorage")
                self.long(len(value.values))
                self.parts.append(np.asarray(value.values, dtype="<i8" if self.long_size == 8 else "<i4").tobytes())
        else:
            raise TypeError(f"cannot write a {type(value).__name__} to a Torch7 file")

    def _table(self, table: dict | T7Table) -> None:
        self.int32(TAG_TABLE)
        if self._reference(table):
            return
        items = table.items if isinstance(table, T7Table) else table
        self.int32(len(items))
        for key, item in items.items():
            self.write(key)
            self.write(item)

    def _tensor(self, spec: TensorSpec) -> None:
        self.int32(TAG_TORCH)
        if self._reference(spec):
            return
        type_name = TYPE_NAMES[spec.storage.dtype]
        self.string("V 1")
        self.string(spec.class_name or f"torch.{type_name}Tensor")
        if 0 in spec.sizes:  # Torch writes an empty tensor as 0 dimensions without a storage
            self.int32(0)
            self.long(1)
            self.write(None)
            return
        self.int32(len(spec.sizes))
        for size in spec.sizes:
            self.long(size)
        for stride in spec.strides:
            self.long(stride)
        self.long(spec.offset + 1)
        self._storage(spec.storage, spec.storage_class or f"torch.{type_name}Storage")

    def _storage(self, storage: np.ndarray, class_name: str) -> None:
        self.int32(TAG_TORCH)
        if self._reference(storage):
            return
        self.string("V 1")
        self.string(class_name)
        self.long(storage.size)
        self.parts.append(storage.astype(storage.dtype.newbyteorder("<")).tobytes())

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


def write_t7(path: str | Path, value: Any, long_size: int = 8) -> Path:
    """Write ``value`` to ``path`` in Torch7's binary format with ``long_size``-byte longs."""
    writer = T7Writer(long_size)
    writer.write(value)
    path = Path(path)
    path.write_bytes(writer.getvalue())
    return path


def module(class_name: str, **fields: Any) -> T7Object:
    """Build an ``nn`` module object with the usual fields (``train = false``, ``output``, ``gradInput``)."""
    contents = {"train": False, "output": np.zeros(0, np.float32), "gradInput": np.zeros(0, np.float32)}
    contents.update(fields)
    return T7Object(class_name, contents)


def sequential(class_name: str, children: list[T7Object], **fields: Any) -> T7Object:
    """Build a container (``nn.Sequential``, ``nn.Concat``, ``nn.ConcatTable``) of ``children``."""
    return module(class_name, modules={index + 1: child for index, child in enumerate(children)}, **fields)
