"""Reference activations from OpenCV DNN (``opencv-python-headless`` 4.x), an implementation independent of nstzoo.

Layer fusion is disabled, so each named layer's output is that layer's own result (a convolution before
the ReLU that follows it), and the plain OpenCV backend on the CPU computes in float32.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np

from converters.errors import ConversionError

logger = logging.getLogger(__name__)


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """Return ``||ours - reference|| / ||reference||`` (Frobenius norms, in float64)."""
    ours = np.asarray(ours, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if ours.shape != reference.shape:
        raise ValueError(f"shapes differ: ours {list(ours.shape)}, reference {list(reference.shape)}")
    norm = np.linalg.norm(reference)
    difference = np.linalg.norm(ours - reference)
    return float(difference / norm) if norm > 0 else float(difference)


def opencv_caffe_outputs(prototxt: str | Path, caffemodel: str | Path, x: np.ndarray,
                         layer_names: Iterable[str], input_name: str = "") -> dict[str, np.ndarray]:
    """Run the Caffe model in OpenCV DNN on ``x`` (N, C, H, W float32) and return the named layers' outputs."""
    try:
        import cv2
    except ImportError as error:
        raise ConversionError("the OpenCV reference needs opencv-python-headless<5: pip install 'opencv-python-headless<5'") from error
    names = list(layer_names)
    try:
        net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    except cv2.error as error:
        raise ConversionError(f"OpenCV could not read {caffemodel} with {prototxt}: {error}") from error
    net.enableFusion(False)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    blob = np.ascontiguousarray(x, dtype=np.float32)
    if input_name:
        net.setInput(blob, input_name)
    else:
        net.setInput(blob)
    outputs = net.forward(names)
    logger.debug("OpenCV computed %d layers of %s", len(names), caffemodel)
    return {name: np.array(output) for name, output in zip(names, outputs)}
