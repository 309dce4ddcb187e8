"""The lean backward modules and NHWC images give autograd's values and gradients, and save less.

The reference is the plain ``GraphNet``, whose ops use PyTorch's own autograd formulas. NCHW results
with lean modules run the same kernels, so they agree to 1e-6 relative; NHWC (channels_last) changes the
order of the float32 sums in each convolution, so those agree to 1e-4 relative.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from converters.graph import GraphSpec, Node
from converters.network import GraphNet
from converters.ops import Pool2d
from modelzoo.engine.fusion import prepare_for_layers
from modelzoo.engine.lean import CompactMaxPool2d, DeferredReLU, FrozenConv2d, MaskedReLU
from modelzoo.engine.losses import gram_matrix
from test_engine_support import tiny_vgg

LAYERS = ["relu1_1", "relu3_1"]  # relu2_1 and the pools in between are not requested


def frozen(net: GraphNet) -> GraphNet:
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


def activations_and_gradient(net, image: torch.Tensor, layers=LAYERS):
    """Return the activations at ``layers`` and the gradient of a loss that reads all of them."""
    x = image.clone().requires_grad_(True)
    features = net.extract(x, layers)
    loss = sum(gram_matrix(value).square().sum() + value.square().mean() for value in features.values())
    loss.backward()
    return {name: value.detach().contiguous() for name, value in features.items()}, x.grad


def saved_bytes(net, image: torch.Tensor, layers=LAYERS) -> int:
    """Return the bytes autograd keeps for the backward pass of one extraction."""
    total = [0]
    seen: set[int] = set()

    def pack(tensor):
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:  # a tensor saved twice (or a view of one) is stored once
            seen.add(key)
            total[0] += tensor.untyped_storage().nbytes()
        return tensor

    x = image.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        features = net.extract(x, layers)
        sum(value.sum() for value in features.values())
    return total[0]


def test_lean_network_matches_autograd():
    image = torch.randn(1, 3, 40, 36, generator=torch.Generator().manual_seed(1)) * 50
    expected, expected_grad = activations_and_gradient(frozen(tiny_vgg()), image)
    lean = prepare_for_layers(frozen(tiny_vgg()), LAYERS, lean_backward=True)
    # relu2_1 is not requested and only pool2 reads it, so pool2 applies it.
    assert isinstance(lean.layers[lean.layer_names.index("relu2_1")], DeferredReLU)
    assert lean.layers[lean.layer_names.index("pool2")].relu
    assert any(isinstance(module, FrozenConv2d) for module in lean.layers)
    got, grad = activations_and_gradient(lean, image)
    for name in LAYERS:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6 * float(expected_grad.abs().max()))


def test_channels_last_matches_autograd():
    image = torch.randn(1, 3, 40, 36, generator=torch.Generator().manual_seed(2)) * 50
    expected, expected_grad = activations_and_gradient(frozen(tiny_vgg()), image)
    lean = prepare_for_layers(frozen(tiny_vgg()), LAYERS, lean_backward=True)
    nhwc = image.contiguous(memory_format=torch.channels_last)
    assert lean.extract(nhwc, ["relu3_1"])["relu3_1"].is_contiguous(memory_format=torch.channels_last)
    got, grad = activations_and_gradient(lean, nhwc)
    for name in LAYERS:
        scale = float(expected[name].abs().max())
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5 * float(expected_grad.abs().max()))


def test_lean_network_saves_less_for_backward():
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    plain = saved_bytes(prepare_for_layers(frozen(tiny_vgg()), LAYERS), image)
    lean = saved_bytes(prepare_for_layers(frozen(tiny_vgg()), LAYERS, lean_backward=True), image)
    # Plain: conv inputs, ReLU outputs, pool inputs and int64 indices (876 KiB). Lean: the requested
    # relu1_1 (256 KiB) and relu3_1, a one-byte mask for relu2_1, int32 pool indices and the weights.
    assert lean < 0.65 * plain, (lean, plain)


def test_gram_matrix_of_nhwc_features_equals_nchw():
    features = torch.randn(1, 8, 5, 7, generator=torch.Generator().manual_seed(4))
    nhwc = features.contiguous(memory_format=torch.channels_last)
    assert not nhwc.is_contiguous()
    # The same products summed in a different order: float32 rounding only.
    torch.testing.assert_close(gram_matrix(nhwc), gram_matrix(features), rtol=1e-5, atol=1e-6)


def test_compact_max_pool_matches_pool():
    for ceil_mode, size in ((False, (9, 12)), (True, (9, 11))):  # odd sizes: Caffe-style rounding up
        pool = Pool2d({"mode": "max", "kernel": 3 if ceil_mode else 2, "stride": 2, "ceil_mode": ceil_mode}, {})
        for layout in (torch.contiguous_format, torch.channels_last):
            source = torch.randn(1, 4, *size, generator=torch.Generator().manual_seed(5))
            upstream = torch.randn_like(pool(source))
            x = source.contiguous(memory_format=layout).requires_grad_(True)
            expected = pool(x)
            (expected_grad,) = torch.autograd.grad(expected, x, upstream)
            got = CompactMaxPool2d(pool)(x)
            (grad,) = torch.autograd.grad(got, x, upstream)
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
            torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-6)
            assert grad.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("kernel", [2, 3])
def test_window_max_pool_matches_pool_with_ties(dtype, layout, kernel):
    # ReLU outputs are full of equal zeros: on a tie the gradient goes to the first position of the window
    # in row-major order, as in PyTorch's kernel. 10 x 11 leaves a row or column outside every window.
    pool = Pool2d({"mode": "max", "kernel": kernel, "stride": kernel}, {})
    source = torch.relu(torch.randn(1, 5, 10, 11, generator=torch.Generator().manual_seed(8))).round()
    upstream = torch.randn(1, 5, 10 // kernel, 11 // kernel, generator=torch.Generator().manual_seed(9)).to(dtype)
    x = source.to(dtype).contiguous(memory_format=layout).requires_grad_(True)
    expected = F.max_pool2d(x, kernel, kernel)
    (expected_grad,) = torch.autograd.grad(expected, x, upstream)
    compact = CompactMaxPool2d(pool)
    got = compact(x)
    (grad,) = torch.autograd.grad(got, x, upstream)
    assert got.grad_fn.name().endswith("WindowMaxPoolFunctionBackward")
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0)
    assert grad.is_contiguous(memory_format=layout)


def test_frozen_conv_trains_unfrozen_weights():
    conv = tiny_vgg().layers[0]
    conv.weight.requires_grad_(True)
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    out = FrozenConv2d(conv)(x)  # weights require grad: the plain module runs and trains them
    out.sum().backward()
    assert conv.weight.grad is not None
    reference = F.conv2d(x, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(out, reference)


def test_masked_relu_matches_relu():
    source = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(6))
    upstream = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(7))
    x = source.clone().requires_grad_(True)
    (expected_grad,) = torch.autograd.grad(torch.relu(x), x, upstream)
    y = source.clone().requires_grad_(True)
    got = MaskedReLU()(y * 1.0)  # in place on a private tensor, as in the network
    (grad,) = torch.autograd.grad(got, y, upstream)
    torch.testing.assert_close(got, torch.relu(source), rtol=0, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0)


def test_requested_relu_keeps_autograd_relu():
    spec = GraphSpec([Node("conv1", "conv2d", ["input"], ["conv1"], {"padding": 1}),
                      Node("relu1", "relu", ["conv1"], ["relu1"])], {"input": [1, 3, 0, 0]}, ["relu1"])
    net = frozen(GraphNet(spec, {"conv1.weight": torch.randn(4, 3, 3, 3), "conv1.bias": torch.zeros(4)}))
    lean = prepare_for_layers(net, ["relu1"], lean_backward=True)
    assert not isinstance(lean.layers[1], MaskedReLU)  # its output is requested, so autograd's ReLU keeps it
