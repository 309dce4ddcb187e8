"""Reading prototxt and caffemodel files: input forms, fork-only fields, mismatched or damaged files."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from converters.caffe import CaffeFormatError, CaffeNetError, convert_caffe, read_caffemodel
from converters.caffe.reader import parse_prototxt, read_blobproto, read_prototxt
from converters.caffe.writer import write_blobproto, write_caffemodel
from converters.errors import UnsupportedLayerError
from converters.formats import ConvertOptions, convert

CONV = 'layer {{ name: "conv" type: "Convolution" bottom: "{bottom}" top: "conv" convolution_param {{ num_output: 2 kernel_size: 3 stride: 2 }} }}\n'


def conv_blobs(inputs: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(0, 1, (2, inputs, 3, 3)).astype(np.float32), np.zeros(2, np.float32)]


def write_net(tmp_path: Path, prototxt: str, blobs: dict[str, list[np.ndarray]], caffemodel_prototxt: str | None = None) -> tuple[Path, Path]:
    """Write ``prototxt`` and a caffemodel (from ``caffemodel_prototxt`` if given) and return both paths."""
    prototxt_path = tmp_path / "deploy.prototxt"
    prototxt_path.write_text(prototxt)
    caffemodel = write_caffemodel(tmp_path / "net.caffemodel", caffemodel_prototxt or prototxt, blobs)
    return caffemodel, prototxt_path


def convert_net(tmp_path: Path, prototxt: str, blobs: dict[str, list[np.ndarray]], input_shape=None):
    caffemodel, prototxt_path = write_net(tmp_path, prototxt, blobs)
    return convert_caffe(caffemodel, ConvertOptions(prototxt=prototxt_path, input_shape=input_shape))


def test_input_with_input_dim(tmp_path: Path) -> None:
    prototxt = 'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 11\ninput_dim: 11\n' + CONV.format(bottom="data")
    spec, _ = convert_net(tmp_path, prototxt, {"conv": conv_blobs()})
    assert spec.inputs == {"data": [1, 3, 11, 11]}


def test_input_with_input_shape(tmp_path: Path) -> None:
    prototxt = 'input: "data"\ninput_shape { dim: 2 dim: 3 dim: 9 dim: 7 }\n' + CONV.format(bottom="data")
    spec, _ = convert_net(tmp_path, prototxt, {"conv": conv_blobs()})
    assert spec.inputs == {"data": [2, 3, 9, 7]}


def test_input_layer_gives_shape(tmp_path: Path) -> None:
    prototxt = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 27 dim: 27 } } }\n'
                + CONV.format(bottom="data"))
    spec, _ = convert_net(tmp_path, prototxt, {"conv": conv_blobs()})
    assert spec.inputs == {"data": [1, 3, 27, 27]}
    assert spec.node_names == ["conv"]


def test_memory_data_layer_gives_shape(tmp_path: Path) -> None:
    prototxt = ('layer { name: "data" type: "MemoryData" top: "data" top: "label" '
                "memory_data_param { batch_size: 1 channels: 3 height: 8 width: 8 } }\n" + CONV.format(bottom="data"))
    spec, _ = convert_net(tmp_path, prototxt, {"conv": conv_blobs()})
    assert spec.inputs == {"data": [1, 3, 8, 8]}


TRAIN_VAL = """name: "train_val"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN } data_param { source: "train_lmdb" batch_size: 64 } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST } data_param { source: "val_lmdb" batch_size: 50 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 3 stride: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "conv" bottom: "label" top: "accuracy" include { phase: TEST } }
"""


def test_data_layer_needs_input_shape(tmp_path: Path) -> None:
    with pytest.raises(CaffeNetError, match="--input-shape"):
        convert_net(tmp_path, TRAIN_VAL, {"conv": conv_blobs()})


def test_training_definition_with_input_shape(tmp_path: Path) -> None:
    spec, _ = convert_net(tmp_path, TRAIN_VAL, {"conv": conv_blobs()}, input_shape=(1, 3, 9, 9))
    # The loss and accuracy layers read the labels, so only the feature layers remain.
    assert spec.inputs == {"data": [1, 3, 9, 9]}
    assert spec.node_names == ["conv"]


def test_train_phase_layers_are_left_out(tmp_path: Path) -> None:
    prototxt = ('input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 9\ninput_dim: 9\n' + CONV.format(bottom="data")
                + 'layer { name: "drop" type: "Dropout" bottom: "conv" top: "conv" include { phase: TRAIN } }\n')
    spec, _ = convert_net(tmp_path, prototxt, {"conv": conv_blobs()})
    assert spec.node_names == ["conv"]


def test_fork_ceil_mode_names_field_and_fork() -> None:
    prototxt = ('input: "data"\nlayer { name: "pool" type: "Pooling" bottom: "data" top: "pool" '
                "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 ceil_mode: false } }\n")
    with pytest.raises(CaffeFormatError, match="ceil_mode") as raised:
        parse_prototxt(prototxt)
    assert "pull request #3057" in str(raised.value)
    assert "round_mode" in str(raised.value)


def test_fork_bn_param_names_field_and_fork() -> None:
    with pytest.raises(CaffeFormatError, match="bn_param") as raised:
        parse_prototxt('layer { name: "bn" type: "BN" bn_param { } }\n')
    assert "caffe-segnet" in str(raised.value)


def test_unknown_field_is_reported() -> None:
    with pytest.raises(CaffeFormatError, match="'kernal_size' of ConvolutionParameter"):
        parse_prototxt('layer { name: "c" type: "Convolution" convolution_param { kernal_size: 3 } }\n')


def test_unmodelled_stock_parameter_is_parsed() -> None:
    # threshold_param is stock Caffe; the layer type is reported as unsupported later, not as a fork.
    net = parse_prototxt('layer { name: "t" type: "Threshold" threshold_param { threshold: 0.5 } }\n')
    assert net.layer[0].type == "Threshold"


def test_layer_and_layers_mix_is_rejected() -> None:
    prototxt = ('layer { name: "a" type: "ReLU" bottom: "data" top: "a" }\n'
                'layers { name: "b" type: RELU bottom: "a" top: "b" }\n')
    with pytest.raises(CaffeFormatError, match="mixes V2 'layer' and V1 'layers'"):
        parse_prototxt(prototxt)


def test_prototxt_syntax_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "deploy.prototxt"
    path.write_text('layer { name: "a" type: "ReLU"\n')
    with pytest.raises(CaffeFormatError, match="deploy.prototxt: invalid prototxt"):
        read_prototxt(path)


def test_input_dim_that_does_not_fit_fc_weights(tmp_path: Path) -> None:
    # The caffemodel's fc layer was trained on 11x11 input: conv k3 s2 gives 2x5x5 = 50 inputs. The
    # prototxt declares 13x13 (2x6x6 = 72), which must fail, naming the layer.
    def net(size: int) -> str:
        return (f'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: {size}\ninput_dim: {size}\n' + CONV.format(bottom="data")
                + 'layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 3 } }\n')

    blobs = {"conv": conv_blobs(), "fc": [np.ones((3, 50), np.float32), np.zeros(3, np.float32)]}
    caffemodel, prototxt = write_net(tmp_path, net(13), blobs, caffemodel_prototxt=net(11))
    with pytest.raises(CaffeNetError, match="layer 'fc' \\(InnerProduct\\)") as raised:
        convert_caffe(caffemodel, ConvertOptions(prototxt=prototxt))
    assert "[1, 3, 13, 13]" in str(raised.value)
    spec, _ = convert_caffe(caffemodel, ConvertOptions(prototxt=prototxt, input_shape=(1, 3, 11, 11)))
    assert spec.inputs["data"] == [1, 3, 11, 11]


def test_conv_weight_shape_mismatch(tmp_path: Path) -> None:
    prototxt = 'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 9\ninput_dim: 9\n' + CONV.format(bottom="data")
    with pytest.raises(CaffeNetError, match="layer 'conv'"):
        convert_net(tmp_path, prototxt, {"conv": conv_blobs(inputs=4)})


def test_missing_weights_are_listed(tmp_path: Path) -> None:
    prototxt = ('input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 9\ninput_dim: 9\n' + CONV.format(bottom="data")
                + 'layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 3 } }\n')
    with pytest.raises(CaffeNetError, match=r"no weights for 2 layer\(s\): conv \(Convolution\), fc \(InnerProduct\)"):
        convert_net(tmp_path, prototxt, {})


def test_unsupported_layers_are_listed_at_once(tmp_path: Path) -> None:
    prototxt = ('input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 9\ninput_dim: 9\n'
                'layer { name: "mvn" type: "MVN" bottom: "data" top: "mvn" }\n'
                'layer { name: "relu" type: "ReLU" bottom: "mvn" top: "relu" }\n'
                'layer { name: "spp" type: "SPP" bottom: "relu" top: "spp" }\n')
    with pytest.raises(UnsupportedLayerError) as raised:
        convert_net(tmp_path, prototxt, {})
    assert raised.value.layers == [("mvn", "MVN"), ("spp", "SPP")]
    assert "mvn (MVN), spp (SPP)" in str(raised.value)


def test_truncated_caffemodel(tmp_path: Path) -> None:
    prototxt = 'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 9\ninput_dim: 9\n' + CONV.format(bottom="data")
    caffemodel, prototxt_path = write_net(tmp_path, prototxt, {"conv": conv_blobs()})
    data = caffemodel.read_bytes()
    caffemodel.write_bytes(data[:-100])
    with pytest.raises(CaffeFormatError, match="truncated or corrupt caffemodel"):
        convert_caffe(caffemodel, ConvertOptions(prototxt=prototxt_path))


def test_prototxt_given_as_caffemodel(tmp_path: Path) -> None:
    prototxt = 'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 9\ninput_dim: 9\n' + CONV.format(bottom="data")
    _, prototxt_path = write_net(tmp_path, prototxt, {"conv": conv_blobs()})
    with pytest.raises(CaffeFormatError, match="not a caffemodel"):
        read_caffemodel(prototxt_path)


def test_missing_prototxt_option(tmp_path: Path) -> None:
    with pytest.raises(CaffeNetError, match="--prototxt"):
        convert("caffe", tmp_path / "net.caffemodel", ConvertOptions())


def test_blobs_are_views_of_the_file(tmp_path: Path) -> None:
    prototxt = 'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 9\ninput_dim: 9\n' + CONV.format(bottom="data")
    caffemodel, _ = write_net(tmp_path, prototxt, {"conv": conv_blobs()})
    weight = read_caffemodel(caffemodel).blobs["conv"][0]
    # No per-value Python floats and no copy: the array does not own its memory, the file map does.
    assert not weight.flags.owndata
    np.testing.assert_array_equal(weight, conv_blobs()[0])


def test_conversion_needs_no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prototxt = 'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 9\ninput_dim: 9\n' + CONV.format(bottom="data")
    caffemodel, prototxt_path = write_net(tmp_path, prototxt, {"conv": conv_blobs()})

    def no_network(*args, **kwargs):
        raise AssertionError("the Caffe converter opened a network socket")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    spec, weights = convert_caffe(caffemodel, ConvertOptions(prototxt=prototxt_path))
    assert set(weights) == {"conv.weight", "conv.bias"}


def test_mean_blobproto_in_bgr_order(tmp_path: Path) -> None:
    mean = np.zeros((1, 3, 2, 2), np.float32)
    mean[0, 0], mean[0, 1], mean[0, 2] = 10, 20, 30  # B, G, R
    array = read_blobproto(write_blobproto(tmp_path / "mean.binaryproto", mean))
    assert array.shape == (1, 3, 2, 2)
    np.testing.assert_array_equal(array.mean(axis=(0, 2, 3)), [10, 20, 30])


def test_undeclared_input_takes_input_shape(tmp_path: Path) -> None:
    prototxt = CONV.format(bottom="data")
    with pytest.raises(CaffeNetError, match="declares no input"):
        convert_net(tmp_path, prototxt, {"conv": conv_blobs()})
    spec, _ = convert_net(tmp_path, prototxt, {"conv": conv_blobs()}, input_shape=(1, 3, 9, 9))
    assert spec.inputs == {"data": [1, 3, 9, 9]}
