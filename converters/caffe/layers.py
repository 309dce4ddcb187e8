"""One converter per Caffe layer type: layer parameters and blobs in, graph op, attrs and weights out.

Caffe stores convolution and inner-product weights in PyTorch's layout already (output channels first), so
the converters only reshape the blobs (old V1 files give every blob four dims) and check their sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from converters.caffe import proto
from converters.caffe.errors import CaffeNetError


@dataclass
class CaffeLayer:
    """One layer of the prototxt, V1 or V2, with its type as a V2 type string."""

    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    message: Any

    def param(self, field_name: str) -> Any:
        """Return the layer's ``field_name`` message, or its defaults if the layer has none (V1 lacks some)."""
        if field_name in self.message.DESCRIPTOR.fields_by_name:
            return getattr(self.message, field_name)
        type_name = proto.LayerParameter.DESCRIPTOR.fields_by_name[field_name].message_type.name
        return proto.message_class(type_name)()


@dataclass
class NodeDraft:
    """The result of a layer converter: the op, its attrs, and its weights by parameter name."""

    op: str
    attrs: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)


Converter = Callable[[CaffeLayer, list[np.ndarray]], NodeDraft]
LAYER_CONVERTERS: dict[str, Converter] = {}

# Layer types whose converter needs blobs from the caffemodel (Scale and Bias only with one bottom).
WEIGHTED_TYPES = {"Convolution", "Deconvolution", "InnerProduct", "BatchNorm", "PReLU"}


def converts(*types: str) -> Callable[[Converter], Converter]:
    def decorate(function: Converter) -> Converter:
        for kind in types:
            LAYER_CONVERTERS[kind] = function
        return function

    return decorate


def _tensor(array: np.ndarray, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Wrap ``array`` without a copy (a view of the mapped caffemodel), reshaped to ``shape``."""
    if shape is not None:
        array = array.reshape(shape)
    if array.dtype != np.float32:
        array = array.astype(np.float32)
    return torch.from_numpy(array)


def _need_blobs(layer: CaffeLayer, blobs: list[np.ndarray], count: int) -> None:
    if len(blobs) < count:
        raise CaffeNetError(
            f"layer '{layer.name}' ({layer.type}) needs {count} blob(s) in the caffemodel, found {len(blobs)}; "
            "the caffemodel does not match the prototxt"
        )


def _two(layer: CaffeLayer, what: str, repeated: Any, h: int | None, w: int | None, default: int | None) -> tuple[int, int]:
    """Return (h, w) from a repeated field with 1 or 2 values, or from its _h and _w fields."""
    if h is not None or w is not None:
        return int(h if h is not None else default), int(w if w is not None else default)
    values = [int(value) for value in repeated]
    if not values:
        if default is None:
            raise CaffeNetError(f"layer '{layer.name}' ({layer.type}) has no {what}")
        return default, default
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise CaffeNetError(f"layer '{layer.name}' ({layer.type}) has {len(values)} {what} values; nstzoo converts 2-D layers only")


def _optional(message: Any, name: str) -> int | None:
    return int(getattr(message, name)) if message.HasField(name) else None


def _count(array: np.ndarray) -> int:
    return int(array.size)


@converts("Convolution", "Deconvolution")
def convert_convolution(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    param = layer.param("convolution_param")
    if param.axis != 1:
        raise CaffeNetError(f"layer '{layer.name}' convolves from axis {param.axis}; nstzoo converts axis 1 only")
    kernel = _two(layer, "kernel_size", param.kernel_size, _optional(param, "kernel_h"), _optional(param, "kernel_w"), None)
    pad = _two(layer, "pad", param.pad, _optional(param, "pad_h"), _optional(param, "pad_w"), 0)
    stride = _two(layer, "stride", param.stride, _optional(param, "stride_h"), _optional(param, "stride_w"), 1)
    dilation = _two(layer, "dilation", param.dilation, None, None, 1)
    outputs, groups = int(param.num_output), int(param.group)
    _need_blobs(layer, blobs, 2 if param.bias_term else 1)

    weight = blobs[0]
    per_channel = kernel[0] * kernel[1]
    if layer.type == "Convolution":
        if _count(weight) % (outputs * per_channel):
            raise _blob_mismatch(layer, "weight", weight, f"{outputs} x C x {kernel[0]} x {kernel[1]}")
        shape = (outputs, _count(weight) // (outputs * per_channel), *kernel)
        op = "conv2d"
    else:
        if outputs % groups or _count(weight) % (outputs // groups * per_channel):
            raise _blob_mismatch(layer, "weight", weight, f"C x {outputs // max(groups, 1)} x {kernel[0]} x {kernel[1]}")
        shape = (_count(weight) // (outputs // groups * per_channel), outputs // groups, *kernel)
        op = "conv_transpose2d"
    if weight.ndim == 4 and weight.shape[0] != 1 and tuple(weight.shape) != shape:
        raise _blob_mismatch(layer, "weight", weight, " x ".join(map(str, shape)))
    draft = NodeDraft(op, {"stride": list(stride), "padding": list(pad), "dilation": list(dilation), "groups": groups},
                      {"weight": _tensor(weight, shape)})
    if param.bias_term:
        draft.weights["bias"] = _bias(layer, blobs[1], outputs)
    return draft


def _bias(layer: CaffeLayer, blob: np.ndarray, outputs: int) -> torch.Tensor:
    if _count(blob) != outputs:
        raise _blob_mismatch(layer, "bias", blob, str(outputs))
    return _tensor(blob, (outputs,))


def _blob_mismatch(layer: CaffeLayer, what: str, blob: np.ndarray, expected: str) -> CaffeNetError:
    return CaffeNetError(
        f"layer '{layer.name}' ({layer.type}): the caffemodel's {what} blob has shape {list(blob.shape)}, "
        f"the prototxt implies {expected}; the caffemodel does not match the prototxt"
    )


@converts("InnerProduct")
def convert_inner_product(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    param = layer.param("inner_product_param")
    outputs = int(param.num_output)
    _need_blobs(layer, blobs, 2 if param.bias_term else 1)
    weight = blobs[0]
    if outputs == 0 or _count(weight) % outputs:
        raise _blob_mismatch(layer, "weight", weight, f"{outputs} x K")
    inputs = _count(weight) // outputs
    if param.transpose:
        tensor = _tensor(weight, (inputs, outputs)).t().contiguous()
    else:
        tensor = _tensor(weight, (outputs, inputs))
    draft = NodeDraft("linear", {"axis": int(param.axis)}, {"weight": tensor})
    if param.bias_term:
        draft.weights["bias"] = _bias(layer, blobs[1], outputs)
    return draft


@converts("Pooling")
def convert_pooling(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    param = layer.param("pooling_param")
    method = proto.message_class("PoolingParameter").PoolMethod.Name(param.pool)
    attrs: dict[str, Any] = {
        "mode": {"MAX": "max", "AVE": "avg"}[method],
        "ceil_mode": param.round_mode == 0,  # CEIL, Caffe's default
        "count_include_pad": True,
        "global": bool(param.global_pooling),
    }
    if not param.global_pooling:
        attrs["kernel"] = list(_two(layer, "kernel_size", [param.kernel_size] if param.HasField("kernel_size") else [],
                                    _optional(param, "kernel_h"), _optional(param, "kernel_w"), None))
        attrs["stride"] = list(_two(layer, "stride", [param.stride], _optional(param, "stride_h"), _optional(param, "stride_w"), 1))
        attrs["padding"] = list(_two(layer, "pad", [param.pad], _optional(param, "pad_h"), _optional(param, "pad_w"), 0))
    return NodeDraft("pool2d", attrs)


@converts("ReLU")
def convert_relu(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    return NodeDraft("relu", {"negative_slope": float(layer.param("relu_param").negative_slope)})


@converts("PReLU")
def convert_prelu(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    _need_blobs(layer, blobs, 1)
    return NodeDraft("caffe_prelu", {}, {"weight": _tensor(blobs[0], (-1,))})


@converts("LRN")
def convert_lrn(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    param = layer.param("lrn_param")
    if param.local_size % 2 == 0:
        raise CaffeNetError(f"layer '{layer.name}' (LRN) has local_size {param.local_size}; Caffe requires an odd size")
    region = "within" if param.norm_region == 1 else "across"
    return NodeDraft("caffe_lrn", {"size": int(param.local_size), "alpha": float(param.alpha), "beta": float(param.beta),
                                   "k": float(param.k), "region": region})


@converts("Dropout")
def convert_dropout(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    # Caffe scales kept activations up during training, so at inference Dropout is the identity.
    return NodeDraft("dropout", {"ratio": float(layer.param("dropout_param").dropout_ratio)})


@converts("Softmax")
def convert_softmax(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    return NodeDraft("softmax", {"axis": int(layer.param("softmax_param").axis)})


@converts("BatchNorm")
def convert_batch_norm(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    param = layer.param("batch_norm_param")
    _need_blobs(layer, blobs, 3)
    mean, var, factor_blob = blobs[0], blobs[1], blobs[2]
    if _count(mean) != _count(var) or _count(factor_blob) != 1:
        raise CaffeNetError(
            f"layer '{layer.name}' (BatchNorm): blobs of shapes {[list(blob.shape) for blob in blobs[:3]]} are not "
            "[mean (C), variance (C), moving-average factor (1)]"
        )
    # Caffe keeps running sums; the statistics are the sums divided by the moving-average factor (0 means 0).
    factor = float(factor_blob.reshape(-1)[0])
    scale = 0.0 if factor == 0.0 else 1.0 / factor
    weights = {
        "mean": torch.from_numpy(mean.reshape(-1).astype(np.float32) * np.float32(scale)),
        "var": torch.from_numpy(var.reshape(-1).astype(np.float32) * np.float32(scale)),
    }
    return NodeDraft("caffe_batch_norm", {"eps": float(param.eps)}, weights)


@converts("Scale")
def convert_scale(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    param = layer.param("scale_param")
    draft = NodeDraft("caffe_scale", {"axis": int(param.axis)})
    # With one bottom the blobs are [scale, bias]; with two, the scale is the second bottom and the
    # blobs are [bias].
    learned_scale = len(layer.bottoms) == 1
    needed = int(learned_scale) + int(param.bias_term)
    _need_blobs(layer, blobs, needed)
    if learned_scale:
        draft.weights["weight"] = _tensor(blobs[0])
    if param.bias_term:
        draft.weights["bias"] = _tensor(blobs[needed - 1])
    return draft


@converts("Bias")
def convert_bias(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    draft = NodeDraft("caffe_bias", {"axis": int(layer.param("bias_param").axis)})
    if len(layer.bottoms) == 1:
        _need_blobs(layer, blobs, 1)
        draft.weights["bias"] = _tensor(blobs[0])
    return draft


@converts("Eltwise")
def convert_eltwise(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    param = layer.param("eltwise_param")
    operation = {0: "prod", 1: "sum", 2: "max"}[param.operation]
    coefficients = [float(value) for value in param.coeff]
    if coefficients and (operation != "sum" or len(coefficients) != len(layer.bottoms)):
        raise CaffeNetError(
            f"layer '{layer.name}' (Eltwise) has {len(coefficients)} coefficients for {len(layer.bottoms)} inputs "
            f"and operation {operation.upper()}; Caffe takes one coefficient per input, with SUM only"
        )
    return NodeDraft("caffe_eltwise", {"operation": operation, "coefficients": coefficients})


@converts("Concat")
def convert_concat(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    param = layer.param("concat_param")
    axis = int(param.concat_dim) if param.HasField("concat_dim") else int(param.axis)
    return NodeDraft("concat", {"axis": axis})


@converts("Crop")
def convert_crop(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    param = layer.param("crop_param")
    return NodeDraft("caffe_crop", {"axis": int(param.axis), "offsets": [int(value) for value in param.offset]})


@converts("Flatten")
def convert_flatten(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    param = layer.param("flatten_param")
    return NodeDraft("flatten", {"axis": int(param.axis), "end_axis": int(param.end_axis)})


@converts("Reshape")
def convert_reshape(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    param = layer.param("reshape_param")
    shape = [int(dim) for dim in param.shape.dim]
    if shape.count(-1) > 1:
        raise CaffeNetError(f"layer '{layer.name}' (Reshape) infers more than one dim (-1) in {shape}")
    return NodeDraft("caffe_reshape", {"shape": shape, "axis": int(param.axis), "num_axes": int(param.num_axes)})


@converts("Split")
def convert_split(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    return NodeDraft("caffe_split", {"count": len(layer.tops)})


@converts("Slice")
def convert_slice(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    param = layer.param("slice_param")
    axis = int(param.slice_dim) if param.HasField("slice_dim") else int(param.axis)
    points = [int(value) for value in param.slice_point]
    if points and len(points) != len(layer.tops) - 1:
        raise CaffeNetError(
            f"layer '{layer.name}' (Slice) has {len(points)} slice points for {len(layer.tops)} tops; expected {len(layer.tops) - 1}"
        )
    return NodeDraft("caffe_slice", {"axis": axis, "points": points, "count": len(layer.tops)})


@converts("Sigmoid")
def convert_sigmoid(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    return NodeDraft("caffe_sigmoid")


@converts("TanH")
def convert_tanh(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    return NodeDraft("caffe_tanh")


@converts("AbsVal")
def convert_absval(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    return NodeDraft("caffe_absval")


@converts("ELU")
def convert_elu(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    return NodeDraft("caffe_elu", {"alpha": float(layer.param("elu_param").alpha)})


@converts("Power")
def convert_power(layer: CaffeLayer, blobs: list[np.ndarray]) -> NodeDraft:
    param = layer.param("power_param")
    return NodeDraft("caffe_power", {"power": float(param.power), "scale": float(param.scale), "shift": float(param.shift)})
