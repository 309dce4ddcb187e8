"""Converted Caffe nets against OpenCV DNN 4.x, layer by layer, on nets these tests write themselves.

Tolerance: every compared layer must be within relative error 1e-4 (||ours - OpenCV|| / ||OpenCV||). Both
sides compute in float32 but sum in a different order (PyTorch's convolution kernels against OpenCV's own
GEMM), which leaves errors near 1e-6 on these nets. A wrong rounding, padding, axis or constant moves a
layer by 1e-2 or more, so 1e-4 separates the two with a margin either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")

from converters.caffe import convert_caffe  # noqa: E402
from converters.caffe.writer import write_caffemodel  # noqa: E402
from converters.formats import ConvertOptions  # noqa: E402
from converters.graph import save_converted  # noqa: E402
from converters.network import GraphNet  # noqa: E402
from converters.reference import opencv_caffe_outputs, relative_error  # noqa: E402

TOLERANCE = 1e-4


def conv_blobs(rng: np.random.Generator, outputs: int, inputs: int, kh: int, kw: int, bias: bool = True) -> list[np.ndarray]:
    scale = 1.0 / np.sqrt(inputs * kh * kw)
    blobs = [rng.normal(0, scale, (outputs, inputs, kh, kw)).astype(np.float32)]
    if bias:
        blobs.append(rng.normal(0, 0.1, outputs).astype(np.float32))
    return blobs


def fc_blobs(rng: np.random.Generator, outputs: int, inputs: int) -> list[np.ndarray]:
    return [rng.normal(0, 1.0 / np.sqrt(inputs), (outputs, inputs)).astype(np.float32),
            rng.normal(0, 0.1, outputs).astype(np.float32)]


def bn_blobs(rng: np.random.Generator, channels: int, factor: float) -> list[np.ndarray]:
    # Caffe stores running sums: statistics times the moving-average factor.
    mean = rng.normal(0, 0.5, channels).astype(np.float32)
    var = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    return [mean * factor, var * factor, np.array([factor], dtype=np.float32)]


def scale_blobs(rng: np.random.Generator, channels: int) -> list[np.ndarray]:
    return [rng.uniform(0.5, 1.5, channels).astype(np.float32), rng.normal(0, 0.2, channels).astype(np.float32)]


def compare(tmp_path: Path, prototxt: str, blobs: dict[str, list[np.ndarray]], shape: tuple[int, ...],
            skip: tuple[str, ...] = (), packed: bool = True, seed: int = 1) -> dict[str, float]:
    """Convert, save, reload, and compare every layer with OpenCV; return the relative errors by layer."""
    prototxt_path = tmp_path / "deploy.prototxt"
    prototxt_path.write_text(prototxt)
    caffemodel = write_caffemodel(tmp_path / "net.caffemodel", prototxt, blobs, packed=packed)
    spec, weights = convert_caffe(caffemodel, ConvertOptions(prototxt=prototxt_path))
    net = GraphNet.from_folder(save_converted(tmp_path / "converted", spec, weights))

    x = np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32)
    names = [name for name in net.layer_names if name not in skip]
    ours = net.extract(torch.from_numpy(x), names)
    reference = opencv_caffe_outputs(prototxt_path, caffemodel, x, names)
    errors = {}
    for name in names:
        ours_value = ours[name].numpy()
        assert ours_value.shape == reference[name].shape, f"{name}: shape {ours_value.shape} vs OpenCV {reference[name].shape}"
        errors[name] = relative_error(ours_value, reference[name])
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOLERANCE, f"layer {worst}: relative error {errors[worst]:.2e}; all: {errors}"
    return errors


def _input(shape: tuple[int, ...]) -> str:
    dims = " ".join(f"dim: {dim}" for dim in shape)
    return f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'


def _conv(name: str, bottom: str, outputs: int, kernel: int, extra: str = "", top: str = "") -> str:
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top or name}" '
            f"convolution_param {{ num_output: {outputs} kernel_size: {kernel} {extra} }} }}\n")


def _relu(name: str, blob: str) -> str:
    return f'layer {{ name: "{name}" type: "ReLU" bottom: "{blob}" top: "{blob}" }}\n'


def test_vgg_like_net(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    prototxt = (
        'name: "vgg_like"\n' + _input((1, 3, 20, 20))
        + _conv("conv1_1", "data", 8, 3, "pad: 1") + _relu("relu1_1", "conv1_1")
        + _conv("conv1_2", "conv1_1", 8, 3, "pad: 1") + _relu("relu1_2", "conv1_2")
        + 'layer { name: "pool1" type: "Pooling" bottom: "conv1_2" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
        + _conv("conv2_1", "pool1", 16, 3, "pad: 1") + _relu("relu2_1", "conv2_1")
        + 'layer { name: "pool2" type: "Pooling" bottom: "conv2_1" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
        + 'layer { name: "fc6" type: "InnerProduct" bottom: "pool2" top: "fc6" inner_product_param { num_output: 32 } }\n'
        + _relu("relu6", "fc6")
        + 'layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }\n'
        + 'layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7" inner_product_param { num_output: 10 } }\n'
        + 'layer { name: "prob" type: "Softmax" bottom: "fc7" top: "prob" }\n'
    )
    blobs = {
        "conv1_1": conv_blobs(rng, 8, 3, 3, 3), "conv1_2": conv_blobs(rng, 8, 8, 3, 3),
        "conv2_1": conv_blobs(rng, 16, 8, 3, 3), "fc6": fc_blobs(rng, 32, 16 * 5 * 5), "fc7": fc_blobs(rng, 10, 32),
    }
    errors = compare(tmp_path, prototxt, blobs, (1, 3, 20, 20))
    assert "conv1_1" in errors
    assert "relu1_1" in errors


def test_nin_like_net_ceil_pooling(tmp_path: Path) -> None:
    # A 16x21 map pooled k3 s2: Caffe rounds the 16 up to 8 where floor rounding gives 7. The AVE pool
    # with pad 1 counts the zero padding, and the last pool is global over a non-square 5x6 map.
    rng = np.random.default_rng(1)
    prototxt = (
        'name: "nin_like"\n' + _input((1, 3, 35, 45))
        + _conv("conv1", "data", 8, 5, "stride: 2") + _relu("relu0", "conv1")
        + _conv("cccp1", "conv1", 8, 1) + _relu("relu1", "cccp1")
        + 'layer { name: "pool1" type: "Pooling" bottom: "cccp1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }\n'
        + _conv("conv2", "pool1", 6, 3, "pad: 1") + _relu("relu3", "conv2")
        + 'layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }\n'
        + 'layer { name: "drop" type: "Dropout" bottom: "pool2" top: "pool2" }\n'
        + _conv("cccp6", "pool2", 5, 1) + _relu("relu9", "cccp6")
        + 'layer { name: "pool4" type: "Pooling" bottom: "cccp6" top: "pool4" pooling_param { pool: AVE global_pooling: true } }\n'
    )
    blobs = {"conv1": conv_blobs(rng, 8, 3, 5, 5), "cccp1": conv_blobs(rng, 8, 8, 1, 1),
             "conv2": conv_blobs(rng, 6, 8, 3, 3), "cccp6": conv_blobs(rng, 5, 6, 1, 1)}
    compare(tmp_path, prototxt, blobs, (1, 3, 35, 45))


def test_fcn_like_net_pad_100_and_crop(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    prototxt = (
        'name: "fcn_like"\n' + _input((1, 3, 12, 14))
        + _conv("conv1_1", "data", 4, 3, "pad: 100") + _relu("relu1_1", "conv1_1")
        + 'layer { name: "pool1" type: "Pooling" bottom: "conv1_1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
        + _conv("score_fr", "pool1", 3, 3)
        + 'layer { name: "upscore" type: "Deconvolution" bottom: "score_fr" top: "upscore" '
          'convolution_param { num_output: 3 kernel_size: 4 stride: 2 bias_term: false } }\n'
        + 'layer { name: "score" type: "Crop" bottom: "upscore" bottom: "data" top: "score" crop_param { axis: 2 offset: 19 } }\n'
    )
    blobs = {"conv1_1": conv_blobs(rng, 4, 3, 3, 3), "score_fr": conv_blobs(rng, 3, 4, 3, 3),
             "upscore": [rng.normal(0, 0.3, (3, 3, 4, 4)).astype(np.float32)]}
    compare(tmp_path, prototxt, blobs, (1, 3, 12, 14))


def test_resnet_like_net(tmp_path: Path) -> None:
    # In-place BatchNorm, Scale and ReLU on one blob, a moving-average factor other than 1, a k3 s2 pad 1
    # max pool on 16x16 (Caffe: 9x9), and Eltwise SUM with coefficients, PROD and MAX.
    rng = np.random.default_rng(3)
    prototxt = (
        'name: "resnet_like"\n' + _input((1, 3, 16, 16))
        + _conv("conv1", "data", 8, 3, "pad: 1")
        + 'layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }\n'
        + 'layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }\n'
        + _relu("relu1", "conv1")
        + 'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }\n'
        + _conv("branch2a", "pool1", 8, 3, "pad: 1 bias_term: false")
        + 'layer { name: "bn2a" type: "BatchNorm" bottom: "branch2a" top: "branch2a" batch_norm_param { eps: 0.001 } }\n'
        + 'layer { name: "scale2a" type: "Scale" bottom: "branch2a" top: "branch2a" scale_param { bias_term: true } }\n'
        + 'layer { name: "sum" type: "Eltwise" bottom: "pool1" bottom: "branch2a" top: "sum" eltwise_param { operation: SUM coeff: 1 coeff: -0.5 } }\n'
        + _relu("relu_sum", "sum")
        + 'layer { name: "prod" type: "Eltwise" bottom: "sum" bottom: "pool1" top: "prod" eltwise_param { operation: PROD } }\n'
        + 'layer { name: "max" type: "Eltwise" bottom: "prod" bottom: "branch2a" top: "max" eltwise_param { operation: MAX } }\n'
        + 'layer { name: "concat" type: "Concat" bottom: "max" bottom: "sum" top: "concat" }\n'
    )
    blobs = {"conv1": conv_blobs(rng, 8, 3, 3, 3), "bn1": bn_blobs(rng, 8, 0.5), "scale1": scale_blobs(rng, 8),
             "branch2a": conv_blobs(rng, 8, 8, 3, 3, bias=False), "bn2a": bn_blobs(rng, 8, 999.0),
             "scale2a": scale_blobs(rng, 8)}
    errors = compare(tmp_path, prototxt, blobs, (1, 3, 16, 16))
    assert {"conv1", "bn1", "scale1", "relu1"} <= set(errors)


def test_lrn_across_and_within_channels(tmp_path: Path) -> None:
    # k stays at its default 1 here: OpenCV 4.14 ignores lrn_param.k (it matches k = 1 for any k), while
    # Caffe adds k. test_caffe_layers checks k != 1 against a hand computation instead.
    rng = np.random.default_rng(4)
    prototxt = (
        'name: "lrn"\n' + _input((1, 3, 9, 9))
        + _conv("conv1", "data", 7, 3, "pad: 1")
        + 'layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 } }\n'
        + 'layer { name: "norm2" type: "LRN" bottom: "norm1" top: "norm2" lrn_param { local_size: 3 alpha: 0.8 beta: 0.6 norm_region: WITHIN_CHANNEL } }\n'
    )
    # Large inputs make the normalisation term dominate, so a wrong alpha/size convention would show.
    blobs = {"conv1": [blob * 3 for blob in conv_blobs(rng, 7, 3, 3, 3)]}
    compare(tmp_path, prototxt, blobs, (1, 3, 9, 9))


def test_group_dilated_rectangular_convolution(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    prototxt = (
        'name: "group"\n' + _input((1, 4, 13, 11))
        + 'layer { name: "conv_g" type: "Convolution" bottom: "data" top: "conv_g" convolution_param { '
          "num_output: 6 group: 2 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 2 pad_w: 1 } }\n"
        + 'layer { name: "conv_d" type: "Convolution" bottom: "conv_g" top: "conv_d" convolution_param { '
          "num_output: 4 kernel_size: 3 dilation: 2 pad: 2 } }\n"
        + 'layer { name: "pool_r" type: "Pooling" bottom: "conv_d" top: "pool_r" pooling_param { '
          "pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1 } }\n"
    )
    blobs = {"conv_g": conv_blobs(rng, 6, 2, 3, 2), "conv_d": conv_blobs(rng, 4, 6, 3, 3)}
    compare(tmp_path, prototxt, blobs, (1, 4, 13, 11))


V1_NET = """name: "v1_net"
input: "data"
input_dim: 1
input_dim: 3
input_dim: 15
input_dim: 15
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" convolution_param { num_output: 6 kernel_size: 3 stride: 2 } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "norm1" type: LRN bottom: "conv1" top: "norm1" lrn_param { local_size: 3 alpha: 0.3 beta: 0.75 } }
layers { name: "pool1" type: POOLING bottom: "norm1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layers { name: "conv2a" type: CONVOLUTION bottom: "pool1" top: "conv2a" convolution_param { num_output: 4 kernel_size: 1 } }
layers { name: "conv2b" type: CONVOLUTION bottom: "pool1" top: "conv2b" convolution_param { num_output: 4 kernel_size: 1 } }
layers { name: "concat" type: CONCAT bottom: "conv2a" bottom: "conv2b" top: "concat" }
layers { name: "sum" type: ELTWISE bottom: "conv2a" bottom: "conv2b" top: "sum" }
layers { name: "fc" type: INNER_PRODUCT bottom: "concat" top: "fc" inner_product_param { num_output: 5 } }
layers { name: "drop" type: DROPOUT bottom: "fc" top: "fc" }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
"""


def _v1_blobs() -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(6)
    return {"conv1": conv_blobs(rng, 6, 3, 3, 3), "conv2a": conv_blobs(rng, 4, 6, 1, 1),
            "conv2b": conv_blobs(rng, 4, 6, 1, 1), "fc": fc_blobs(rng, 5, 8 * 3 * 3)}


def test_v1_format_net(tmp_path: Path) -> None:
    errors = compare(tmp_path, V1_NET, _v1_blobs(), (1, 3, 15, 15))
    assert "relu1" in errors


def test_v1_format_unpacked_floats(tmp_path: Path) -> None:
    # Old caffemodels store each float as its own tagged field rather than one packed run.
    compare(tmp_path, V1_NET, _v1_blobs(), (1, 3, 15, 15), packed=False)


def test_other_layer_types(tmp_path: Path) -> None:
    # OpenCV 4.14 has no Bias layer; test_caffe_layers checks Bias by hand.
    rng = np.random.default_rng(7)
    prototxt = (
        'name: "misc"\n' + _input((1, 4, 6, 6))
        + 'layer { name: "prelu" type: "PReLU" bottom: "data" top: "prelu" }\n'
        + 'layer { name: "elu" type: "ELU" bottom: "prelu" top: "elu" elu_param { alpha: 0.7 } }\n'
        + 'layer { name: "sigmoid" type: "Sigmoid" bottom: "elu" top: "sigmoid" }\n'
        + 'layer { name: "tanh" type: "TanH" bottom: "data" top: "tanh" }\n'
        + 'layer { name: "abs" type: "AbsVal" bottom: "data" top: "abs" }\n'
        + 'layer { name: "power" type: "Power" bottom: "abs" top: "power" power_param { power: 1.5 scale: 0.5 shift: 0.25 } }\n'
        + 'layer { name: "scale" type: "Scale" bottom: "tanh" top: "scale" scale_param { bias_term: true } }\n'
        + 'layer { name: "slice" type: "Slice" bottom: "power" top: "slice_a" top: "slice_b" slice_param { axis: 1 slice_point: 1 } }\n'
        + 'layer { name: "flatten" type: "Flatten" bottom: "slice_b" top: "flatten" }\n'
        + 'layer { name: "reshape" type: "Reshape" bottom: "flatten" top: "reshape" reshape_param { shape { dim: 0 dim: 3 dim: -1 } } }\n'
        + 'layer { name: "leaky" type: "ReLU" bottom: "scale" top: "leaky" relu_param { negative_slope: 0.1 } }\n'
    )
    blobs = {"prelu": [rng.uniform(0.05, 0.5, 4).astype(np.float32)], "scale": [rng.normal(0, 1, 4).astype(np.float32), rng.normal(0, 1, 4).astype(np.float32)]}
    compare(tmp_path, prototxt, blobs, (1, 4, 6, 6))


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_pooling_padding_over_half_kernel(tmp_path: Path, pool: str) -> None:
    # pad 2 with kernel 3 is legal in Caffe (pad < kernel) but over PyTorch's pad <= kernel / 2 limit, and
    # 11 + 4 - 3 = 12 is not a multiple of stride 5, so Caffe's round-up and window clipping both apply.
    prototxt = (
        'name: "pool_pad"\n' + _input((1, 2, 11, 9))
        + f'layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param {{ pool: {pool} kernel_size: 3 stride: 5 pad: 2 }} }}\n'
        + f'layer {{ name: "pool_odd" type: "Pooling" bottom: "data" top: "pool_odd" pooling_param {{ pool: {pool} kernel_size: 4 stride: 3 pad: 1 }} }}\n'
    )
    compare(tmp_path, prototxt, {}, (1, 2, 11, 9))
