"""Errors of the Caffe reader and converter."""

from __future__ import annotations

from converters.errors import ConversionError


class CaffeFormatError(ConversionError, ValueError):
    """A prototxt or caffemodel cannot be read: a syntax error, a truncated file, a field from a Caffe fork."""


class CaffeNetError(ConversionError, ValueError):
    """The network is readable but inconsistent: missing inputs, blob shapes that do not match the prototxt."""
