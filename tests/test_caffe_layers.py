"""Caffe layer semantics checked against hand computations and float64 references.

Tolerances: values computed by hand or in float64 are compared with ``rtol=1e-5, atol=1e-6``, which is the
float32 rounding of a few dozen operations. Exact equality would fail on summation order alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from converters.caffe import convert_caffe
from converters.caffe.writer import write_caffemodel
from converters.formats import ConvertOptions
from converters.network import GraphNet
from converters.ops import pooled_size

RTOL, ATOL = 1e-5, 1e-6


def build(tmp_path: Path, shape: tuple[int, ...], body: str, blobs: dict[str, list[np.ndarray]] | None = None) -> GraphNet:
    dims = " ".join(f"input_dim: {dim}" for dim in shape)
    prototxt = f'input: "data"\n{dims}\n{body}'
    prototxt_path = tmp_path / "deploy.prototxt"
    prototxt_path.write_text(prototxt)
    caffemodel = write_caffemodel(tmp_path / "net.caffemodel", prototxt, blobs or {})
    return GraphNet(*convert_caffe(caffemodel, ConvertOptions(prototxt=prototxt_path)))


def run(net: GraphNet, x: np.ndarray, layer: str) -> np.ndarray:
    return net.extract(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), [layer])[layer].numpy()


@pytest.mark.parametrize(("size", "kernel", "stride", "pad", "expected"), [
    (112, 3, 2, 1, 57),  # ResNet's pool1: floor rounding gives 56
    (16, 3, 2, 0, 8),    # ceil((16 - 3) / 2) + 1
    (13, 3, 2, 0, 6),    # exact division: no rounding
    (5, 2, 2, 1, 3),     # a window that would start in the padding is dropped: 4 becomes 3
])
def test_pooled_size_caffe_rounding(size: int, kernel: int, stride: int, pad: int, expected: int) -> None:
    assert pooled_size(size, kernel, stride, pad, ceil_mode=True) == expected


def test_max_pool_112_gives_57(tmp_path: Path) -> None:
    net = build(tmp_path, (1, 1, 112, 112),
                'layer { name: "pool1" type: "Pooling" bottom: "data" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }\n')
    x = np.arange(112 * 112, dtype=np.float32).reshape(1, 1, 112, 112)
    y = run(net, x, "pool1")
    assert y.shape == (1, 1, 57, 57)
    # The last window covers rows and columns 111 (and the padding past it): the input's last value.
    assert y[0, 0, -1, -1] == x[0, 0, -1, -1]


def test_round_mode_floor(tmp_path: Path) -> None:
    net = build(tmp_path, (1, 1, 16, 16),
                'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR } }\n')
    assert run(net, np.zeros((1, 1, 16, 16)), "pool").shape == (1, 1, 7, 7)


def test_ave_pool_counts_padding_not_overhang(tmp_path: Path) -> None:
    # Ones of 4x4, kernel 3, stride 2, pad 1: Caffe gives 3x3. Along one axis the windows start at -1, 1
    # and 3; the last one ends at the padded edge 5 instead of 6, so its divisor counts one input row and
    # one padding row (2), not the overhang. Per axis: (inputs, divisor) = (2, 3), (3, 3), (1, 2).
    net = build(tmp_path, (1, 1, 4, 4),
                'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }\n')
    y = run(net, np.ones((1, 1, 4, 4)), "pool")
    per_axis = np.array([2 / 3, 3 / 3, 1 / 2])
    np.testing.assert_allclose(y[0, 0], np.outer(per_axis, per_axis), rtol=RTOL, atol=ATOL)


def test_global_pooling_non_square(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(0, 1, (1, 2, 7, 5)).astype(np.float32)
    net = build(tmp_path, (1, 2, 7, 5),
                'layer { name: "ave" type: "Pooling" bottom: "data" top: "ave" pooling_param { pool: AVE global_pooling: true } }\n'
                'layer { name: "max" type: "Pooling" bottom: "data" top: "max" pooling_param { pool: MAX global_pooling: true } }\n')
    np.testing.assert_allclose(run(net, x, "ave"), x.astype(np.float64).mean(axis=(2, 3), keepdims=True), rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(run(net, x, "max"), x.max(axis=(2, 3), keepdims=True))


def test_group_convolution_keeps_groups_apart(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    weight = rng.normal(0, 1, (4, 2, 3, 3)).astype(np.float32)
    bias = np.array([1, 2, 3, 4], np.float32)
    net = build(tmp_path, (1, 4, 5, 5),
                'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 group: 2 } }\n',
                {"conv": [weight, bias]})
    x = rng.normal(0, 1, (1, 4, 5, 5)).astype(np.float32)
    x[:, :2] = 0  # the first group's inputs
    y = run(net, x, "conv")
    np.testing.assert_array_equal(y[0, 0], np.full((3, 3), 1.0, np.float32))
    np.testing.assert_array_equal(y[0, 1], np.full((3, 3), 2.0, np.float32))
    assert np.abs(y[0, 2:] - bias[2:, None, None]).max() > 0.1


def test_convolution_against_float64(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    weight = rng.normal(0, 1, (2, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(0, 1, 2).astype(np.float32)
    net = build(tmp_path, (1, 3, 4, 4),
                'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 3 } }\n',
                {"conv": [weight, bias]})
    x = rng.normal(0, 1, (1, 3, 4, 4)).astype(np.float32)
    expected = np.zeros((2, 2, 2))
    for o in range(2):
        for i in range(2):
            for j in range(2):
                expected[o, i, j] = (x[0, :, i:i + 3, j:j + 3].astype(np.float64) * weight[o]).sum() + bias[o]
    np.testing.assert_allclose(run(net, x, "conv")[0], expected, rtol=RTOL, atol=ATOL)


LRN_INPUT = np.array([1, 2, 3, 4, 5], np.float32).reshape(1, 5, 1, 1)


@pytest.mark.parametrize("k", [1.0, 2.0])
def test_lrn_across_channels_by_hand(tmp_path: Path, k: float) -> None:
    net = build(tmp_path, (1, 5, 1, 1),
                f'layer {{ name: "norm" type: "LRN" bottom: "data" top: "norm" lrn_param {{ local_size: 5 alpha: 1 beta: 0.75 k: {k} }} }}\n')
    y = run(net, LRN_INPUT, "norm")
    # Centre channel (3): its window covers all five channels, 1 + 4 + 9 + 16 + 25 = 55; alpha / n = 1/5.
    assert y[0, 2, 0, 0] == pytest.approx(3 / (k + 55 / 5) ** 0.75, rel=RTOL)
    # First channel: the window is channels 1..3 (two channels of zero padding), 1 + 4 + 9 = 14.
    assert y[0, 0, 0, 0] == pytest.approx(1 / (k + 14 / 5) ** 0.75, rel=RTOL)


def test_lrn_within_channel_by_hand(tmp_path: Path) -> None:
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    net = build(tmp_path, (1, 1, 3, 3),
                'layer { name: "norm" type: "LRN" bottom: "data" top: "norm" lrn_param { local_size: 3 alpha: 0.9 beta: 0.5 k: 5 norm_region: WITHIN_CHANNEL } }\n')
    y = run(net, x, "norm")
    # Centre: the 3x3 window is the whole map, sum of squares 285, averaged over 9 cells. Caffe's shift
    # is 1 here whatever the value of k.
    assert y[0, 0, 1, 1] == pytest.approx(5 / (1 + 0.9 * 285 / 9) ** 0.5, rel=RTOL)
    # Corner (0, 0): the window covers 1, 2, 4, 5 and five padding cells, still divided by 9.
    assert y[0, 0, 0, 0] == pytest.approx(1 / (1 + 0.9 * (1 + 4 + 16 + 25) / 9) ** 0.5, rel=RTOL)


def test_in_place_chain_keeps_each_layer_output(tmp_path: Path) -> None:
    # conv1 -> ReLU -> BatchNorm -> Scale -> Pooling, all on blob "conv1".
    weight = np.ones((1, 1, 1, 1), np.float32)
    blobs = {"conv1": [weight, np.array([-1.0], np.float32)],
             "bn1": [np.array([2.0], np.float32), np.array([8.0], np.float32), np.array([2.0], np.float32)],
             "scale1": [np.array([3.0], np.float32)]}
    net = build(tmp_path, (1, 1, 2, 2),
                'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 1 kernel_size: 1 } }\n'
                'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'
                'layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { eps: 0 } }\n'
                'layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" }\n'
                'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 } }\n',
                blobs)
    x = np.array([[[[0.0, 1.0], [3.0, 9.0]]]], np.float32)
    out = net.extract(torch.from_numpy(x), ["conv1", "relu1", "bn1", "scale1", "pool1"])
    conv = x - 1
    relu = np.maximum(conv, 0)
    bn = (relu - 1.0) / 2.0  # mean 2/2, variance 8/2: the blobs are divided by the factor blob
    np.testing.assert_allclose(out["conv1"].numpy(), conv, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out["relu1"].numpy(), relu, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out["bn1"].numpy(), bn, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out["scale1"].numpy(), 3 * bn, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out["pool1"].numpy(), [[[[3 * 3.5]]]], rtol=RTOL, atol=ATOL)


def test_standalone_scale_and_bias_on_input(tmp_path: Path) -> None:
    # A Scale with bias as the first layer, as mean subtraction; then a Bias layer.
    blobs = {"normalize": [np.array([2.0, 0.5], np.float32), np.array([-1.0, 1.0], np.float32)],
             "shift": [np.array([10.0, 20.0], np.float32)]}
    net = build(tmp_path, (1, 2, 1, 2),
                'layer { name: "normalize" type: "Scale" bottom: "data" top: "normalize" scale_param { bias_term: true } }\n'
                'layer { name: "shift" type: "Bias" bottom: "normalize" top: "shift" }\n', blobs)
    x = np.array([[[[1.0, 2.0]], [[4.0, 8.0]]]], np.float32)
    np.testing.assert_allclose(run(net, x, "normalize"), [[[[1.0, 3.0]], [[3.0, 5.0]]]], rtol=RTOL)
    np.testing.assert_allclose(run(net, x, "shift"), [[[[11.0, 13.0]], [[23.0, 25.0]]]], rtol=RTOL)


def test_slice_eltwise_crop_reshape_by_hand(tmp_path: Path) -> None:
    net = build(tmp_path, (1, 2, 4, 4),
                'layer { name: "slice" type: "Slice" bottom: "data" top: "a" top: "b" }\n'
                'layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" eltwise_param { coeff: 2 coeff: -1 } }\n'
                'layer { name: "pool" type: "Pooling" bottom: "a" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
                'layer { name: "crop" type: "Crop" bottom: "data" bottom: "pool" top: "crop" crop_param { axis: 1 offset: 1 offset: 1 offset: 2 } }\n'
                'layer { name: "reshape" type: "Reshape" bottom: "crop" top: "reshape" reshape_param { shape { dim: 0 dim: -1 } } }\n')
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
    out = net.extract(torch.from_numpy(x), ["slice", "sum", "crop", "reshape"])
    np.testing.assert_array_equal(out["slice"].numpy(), x[:, :1])
    np.testing.assert_array_equal(out["sum"].numpy(), 2 * x[:, :1] - x[:, 1:])
    # Crop to the 1x1x2x2 shape of "pool", from axis 1, at offsets 1 (channel), 1 (row), 2 (column).
    np.testing.assert_array_equal(out["crop"].numpy(), x[:, 1:2, 1:3, 2:4])
    np.testing.assert_array_equal(out["reshape"].numpy(), x[:, 1:2, 1:3, 2:4].reshape(1, 4))


def test_crop_past_the_input_fails_at_conversion(tmp_path: Path) -> None:
    from converters.caffe import CaffeNetError

    with pytest.raises(CaffeNetError, match="layer 'crop'"):
        build(tmp_path, (1, 2, 4, 4),
              'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
              'layer { name: "crop" type: "Crop" bottom: "data" bottom: "pool" top: "crop" crop_param { offset: 3 } }\n')
