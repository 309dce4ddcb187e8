"""Torch7 .t7 files: the reader on hand-made byte streams, and converted networks against OpenCV.

The networks are written with nstzoo's own writer (Lua Torch cannot be installed today) and run through
OpenCV 4.x ``cv2.dnn.readNetFromTorch``, a separate parser and implementation. OpenCV 4.14 accepts
Sequential, Concat, ConcatTable, CAddTable, SpatialConvolution(MM), SpatialFullConvolution, Max/Average
pooling with ceil mode, SpatialZeroPadding (not its cropping mode), SpatialReflectionPadding, SpatialBatchNormalization,
InstanceNormalization, ReLU, Tanh, Sigmoid, Linear, View, Dropout, MulConstant, Identity and the
cudnn.* classes; it rejects LeakyReLU and SpatialReplicationPadding, which are checked by hand instead.

Tolerance against OpenCV: relative error 1e-5. Both sides compute in float32 with different summation
orders; the errors measured are 1e-7 to 1e-6.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from converters.errors import UnsupportedLayerError
from converters.formats import ConvertOptions, convert, detect_format
from converters.network import GraphNet
from converters.torch7.reader import T7FormatError, T7Object, T7Table, read_t7, read_t7_bytes
from converters.torch7.writer import LongStorage, T7Writer, TensorSpec, module, sequential, write_t7

cv2 = pytest.importorskip("cv2")

TOLERANCE = 1e-5


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    ours = np.asarray(ours, dtype=np.float64).reshape(-1)
    reference = np.asarray(reference, dtype=np.float64).reshape(-1)
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


def random(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def conv(rng, n_in, n_out, k_h, k_w, pad_h=0, pad_w=0, stride=1, class_name="nn.SpatialConvolution", **fields):
    return module(class_name, nInputPlane=n_in, nOutputPlane=n_out, kH=k_h, kW=k_w, dH=stride, dW=stride,
                  padH=pad_h, padW=pad_w, weight=random(rng, n_out, n_in, k_h, k_w), bias=random(rng, n_out), **fields)


def run_ours(path: Path, x: np.ndarray) -> np.ndarray:
    spec, weights = convert("torch7", path, ConvertOptions())
    with torch.no_grad():
        return GraphNet(spec, weights)(torch.from_numpy(x)).numpy()


def run_opencv(path: Path, x: np.ndarray) -> np.ndarray:
    net = cv2.dnn.readNetFromTorch(str(path))
    net.setInput(x)
    return net.forward()


def opencv_networks(rng: np.random.Generator) -> dict[str, list[T7Object]]:
    """Networks OpenCV can read, one concern each."""
    bn = dict(running_mean=random(rng, 4), running_var=rng.random(4).astype(np.float32) + 0.5,
              weight=random(rng, 4), bias=random(rng, 4), eps=1e-5)
    return {
        "conv_relu": [conv(rng, 3, 4, 3, 3, 1, 1), module("nn.ReLU", threshold=0, val=0)],
        "non_square_kernel": [conv(rng, 3, 4, 1, 3, 0, 1)],
        "conv_mm_2d_weight": [module("nn.SpatialConvolutionMM", nInputPlane=3, nOutputPlane=4, kH=3, kW=1, dH=1, dW=1,
                                     padH=1, padW=0, weight=random(rng, 4, 3 * 3 * 1), bias=random(rng, 4))],
        "strided_conv": [conv(rng, 3, 5, 3, 3, 1, 1, stride=2)],
        "full_convolution": [module("nn.SpatialFullConvolution", nInputPlane=3, nOutputPlane=2, kH=3, kW=3, dH=2, dW=2,
                                    padH=1, padW=1, adjH=1, adjW=1, weight=random(rng, 3, 2, 3, 3), bias=random(rng, 2))],
        "max_pool_ceil": [module("nn.SpatialMaxPooling", kH=3, kW=3, dH=2, dW=2, padH=0, padW=0, ceil_mode=True)],
        "max_pool_floor": [module("nn.SpatialMaxPooling", kH=3, kW=3, dH=2, dW=2, padH=0, padW=0, ceil_mode=False)],
        "avg_pool_ceil_padded": [module("nn.SpatialAveragePooling", kH=3, kW=3, dH=2, dW=2, padH=1, padW=1,
                                        ceil_mode=True, count_include_pad=True, divide=True)],
        "reflection_padding": [module("nn.SpatialReflectionPadding", pad_l=1, pad_r=2, pad_t=0, pad_b=1)],
        "zero_padding": [module("nn.SpatialZeroPadding", pad_l=2, pad_r=1, pad_t=1, pad_b=0)],
        "batch_norm": [conv(rng, 3, 4, 3, 3, 1, 1), module("nn.SpatialBatchNormalization", affine=True, **bn)],
        "instance_norm": [conv(rng, 3, 4, 3, 3, 1, 1), module("nn.InstanceNormalization", nOutput=4, eps=1e-5,
                                                              weight=random(rng, 4), bias=random(rng, 4))],
        "tanh_sigmoid": [conv(rng, 3, 4, 3, 3, 1, 1), module("nn.Tanh"), conv(rng, 4, 2, 1, 1), module("nn.Sigmoid")],
        "mul_constant_dropout_identity": [module("nn.MulConstant", constant_scalar=0.25, inplace=False),
                                          module("nn.Dropout", p=0.5, v2=True), module("nn.Identity")],
        "concat_channels": [sequential("nn.Concat", [conv(rng, 3, 2, 3, 3, 1, 1), conv(rng, 3, 3, 1, 1)], dimension=2)],
        "residual_add": [sequential("nn.ConcatTable", [conv(rng, 3, 2, 3, 3, 1, 1), conv(rng, 3, 2, 1, 1)]),
                         module("nn.CAddTable", inplace=False)],
        "cudnn_classes": [conv(rng, 3, 4, 3, 3, 1, 1, class_name="cudnn.SpatialConvolution", groups=1),
                          module("cudnn.ReLU", threshold=0, val=0),
                          module("cudnn.SpatialMaxPooling", kH=2, kW=2, dH=2, dW=2, padH=0, padW=0, ceil_mode=True)],
        "nested_sequential": [sequential("nn.Sequential", [conv(rng, 3, 4, 3, 3, 1, 1),
                                                           sequential("nn.Sequential", [module("nn.ReLU", threshold=0, val=0)])])],
    }


CASES = sorted(opencv_networks(np.random.default_rng(0)))


@pytest.mark.parametrize("case", CASES)
def test_network_matches_opencv(case: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = write_t7(tmp_path / f"{case}.t7", sequential("nn.Sequential", opencv_networks(rng)[case]))
    x = rng.standard_normal((1, 3, 7, 8)).astype(np.float32)
    ours, reference = run_ours(path, x), run_opencv(path, x)
    assert ours.shape == reference.shape
    assert relative_error(ours, reference) < TOLERANCE


def test_view_linear_matches_opencv(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    net = sequential("nn.Sequential", [
        module("nn.View", size=LongStorage((48,)), numElements=48, numInputDims=3),
        module("nn.Linear", weight=random(rng, 5, 48), bias=random(rng, 5)),
    ])
    path = write_t7(tmp_path / "linear.t7", net)
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    ours, reference = run_ours(path, x), run_opencv(path, x)
    assert ours.shape == (1, 5)
    assert relative_error(ours, reference) < TOLERANCE


def test_cuda_tensors_read_as_float(tmp_path: Path) -> None:
    """cudnn.SpatialConvolution with torch.CudaTensor weights over a torch.CudaStorage."""
    rng = np.random.default_rng(3)
    weight = random(rng, 1, 3, 3, 3)
    bias = random(rng, 1)
    layer = module("cudnn.SpatialConvolution", nInputPlane=3, nOutputPlane=1, kH=3, kW=3, dH=1, dW=1, padH=0, padW=0,
                   weight=TensorSpec.of(weight, "torch.CudaTensor", "torch.CudaStorage"),
                   bias=TensorSpec.of(bias, "torch.CudaTensor", "torch.CudaStorage"))
    path = write_t7(tmp_path / "cuda.t7", sequential("nn.Sequential", [layer]))
    spec, weights = convert("torch7", path, ConvertOptions())
    assert spec.nodes[0].op == "conv2d"
    assert torch.equal(weights["1.weight"], torch.from_numpy(weight))
    x = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias))
    with torch.no_grad():
        assert torch.allclose(GraphNet(spec, weights)(torch.from_numpy(x)), expected, atol=1e-5)


def test_padding_modules_pad_order_and_shapes(tmp_path: Path) -> None:
    """Reflection(1,1,1,1) -> conv 3x3 -> Replication(l=2, r=0, t=1, b=0): 4x4 -> 4x4 -> 5x6."""
    rng = np.random.default_rng(4)
    kernel = random(rng, 1, 3, 3, 3)
    net = sequential("nn.Sequential", [
        module("nn.SpatialReflectionPadding", pad_l=1, pad_r=1, pad_t=1, pad_b=1),
        module("nn.SpatialConvolution", nInputPlane=3, nOutputPlane=1, kH=3, kW=3, dH=1, dW=1, padH=0, padW=0,
               weight=kernel, bias=np.zeros(1, np.float32)),
        module("nn.SpatialReplicationPadding", pad_l=2, pad_r=0, pad_t=1, pad_b=0),
    ])
    path = write_t7(tmp_path / "pads.t7", net)
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    spec, weights = convert("torch7", path, ConvertOptions())
    values = GraphNet(spec, weights).extract(torch.from_numpy(x), ["2", "3"])
    assert tuple(values["2"].shape) == (1, 1, 4, 4)
    assert tuple(values["3"].shape) == (1, 1, 5, 6)
    # Hand computation with numpy: reflect, correlate, then repeat the edge rows and columns.
    padded = np.pad(x[0], ((0, 0), (1, 1), (1, 1)), mode="reflect")
    conv_out = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            conv_out[i, j] = np.sum(padded[:, i:i + 3, j:j + 3] * kernel[0])
    expected = np.pad(conv_out, ((1, 0), (2, 0)), mode="edge")
    assert np.allclose(values["3"][0, 0].detach().numpy(), expected, atol=1e-4)


def test_leaky_relu_by_hand(tmp_path: Path) -> None:
    path = write_t7(tmp_path / "leaky.t7", sequential("nn.Sequential", [module("nn.LeakyReLU", negval=0.2, inplace=False)]))
    x = np.array([[[[-2.0, -0.5], [0.0, 3.0]]]], dtype=np.float32)
    assert np.allclose(run_ours(path, x), [[[[-0.4, -0.1], [0.0, 3.0]]]])


def test_negative_zero_padding_crops(tmp_path: Path) -> None:
    """OpenCV 4.14 rejects SpatialZeroPadding's cropping mode, so this is checked by slicing."""
    crop = module("nn.SpatialZeroPadding", pad_l=-1, pad_r=0, pad_t=1, pad_b=-2)
    path = write_t7(tmp_path / "crop.t7", sequential("nn.Sequential", [crop]))
    x = np.arange(20, dtype=np.float32).reshape(1, 1, 4, 5)
    expected = np.pad(x[:, :, :2, 1:], ((0, 0), (0, 0), (1, 0), (0, 0)))
    assert np.array_equal(run_ours(path, x), expected)


def test_ceil_mode_read_from_object(tmp_path: Path) -> None:
    """SpatialMaxPooling(3, 3, 2, 2) on 6x6: 3x3 with ceil_mode = true, 2x2 without."""
    x = np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6)
    for ceil, size in ((True, 3), (False, 2)):
        pool = module("nn.SpatialMaxPooling", kH=3, kW=3, dH=2, dW=2, padH=0, padW=0, ceil_mode=ceil)
        path = write_t7(tmp_path / f"pool_{ceil}.t7", sequential("nn.Sequential", [pool]))
        assert run_ours(path, x).shape == (1, 1, size, size)
    # The last ceil window covers rows and columns 4-5 only, so its maximum is the corner 35.
    assert run_ours(tmp_path / "pool_True.t7", x)[0, 0, 2, 2] == 35.0


def test_long_size_detected(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    net = sequential("nn.Sequential", [conv(rng, 3, 2, 3, 3, 1, 1)])
    x = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    eight = run_ours(write_t7(tmp_path / "long8.t7", net, long_size=8), x)
    four_path = write_t7(tmp_path / "long4.t7", net, long_size=4)
    assert read_t7_bytes(four_path.read_bytes())[1] == 4
    assert read_t7_bytes((tmp_path / "long8.t7").read_bytes())[1] == 8
    assert np.array_equal(run_ours(four_path, x), eight)


def test_shared_tensor_and_table_key(tmp_path: Path) -> None:
    """A storage shared by two tensors, a table used as a key, and a table that contains itself."""
    storage = np.arange(6, dtype=np.float32)
    first = TensorSpec(storage, (2, 3), (3, 1), 0)
    transposed = TensorSpec(storage, (3, 2), (1, 3), 0)
    key = T7Table({1: "a"})
    cyclic = T7Table({})
    cyclic.items["self"] = cyclic
    path = write_t7(tmp_path / "tables.t7", {"first": first, "second": transposed, "again": first,
                                               "lookup": {key: "value"}, "key": key, "cyclic": cyclic})
    value = read_t7(path)
    assert np.array_equal(value.get("first"), storage.reshape(2, 3))
    assert np.array_equal(value.get("second"), storage.reshape(2, 3).T)
    assert value.get("again") is value.get("first")
    assert value.get("lookup").get(value.get("key")) == "value"
    assert value.get("cyclic").get("self") is value.get("cyclic")


def test_unsupported_modules_listed_together(tmp_path: Path) -> None:
    net = sequential("nn.Sequential", [module("nn.SpatialCrossMapLRN", size=5), module("nn.ReLU", threshold=0, val=0),
                                       module("nn.SoftMax")])
    path = write_t7(tmp_path / "unsupported.t7", net)
    with pytest.raises(UnsupportedLayerError) as caught:
        convert("torch7", path, ConvertOptions())
    assert caught.value.layers == [("1", "nn.SpatialCrossMapLRN"), ("3", "nn.SoftMax")]


def test_saved_options_table(tmp_path: Path) -> None:
    """fast-neural-style saves {model = net, opt = options}; the network is the model entry."""
    rng = np.random.default_rng(6)
    path = write_t7(tmp_path / "checkpoint.t7", {"model": sequential("nn.Sequential", [conv(rng, 3, 2, 1, 1)]),
                                                 "opt": {"arch": "c9s1-32"}})
    spec, _ = convert("torch7", path, ConvertOptions())
    assert spec.node_names == ["1"]
    assert detect_format(path)[0] == "torch7"


def test_truncated_file_names_the_problem(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    path = write_t7(tmp_path / "full.t7", sequential("nn.Sequential", [conv(rng, 3, 2, 3, 3)]))
    cut = tmp_path / "cut.t7"
    cut.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(T7FormatError, match="not a readable Torch7 binary file"):
        read_t7(cut)


def test_number_and_boolean_encoding() -> None:
    writer = T7Writer()
    writer.write({"n": 2.5, "flag": True})
    data = writer.getvalue()
    assert struct.unpack("<i", data[:4])[0] == 3  # a table
    value, _ = read_t7_bytes(data)
    assert value.get("n") == 2.5
    assert value.get("flag") is True
