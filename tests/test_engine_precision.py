"""``precision="auto"`` and the bfloat16 network: the choice per CPU and device, and values close to float32."""

from __future__ import annotations

import pytest
import torch

from modelzoo.engine.fusion import prepare_for_layers
from modelzoo.engine.precision import cpu_has_native_bfloat16, resolve_precision
from test_engine_support import tiny_vgg

ZEN4_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16 avx512_vnni\n"
SKYLAKE_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni\n"
SAPPHIRE_RAPIDS_FLAGS = "processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n"


@pytest.mark.parametrize("cpuinfo, native", [(ZEN4_FLAGS, True), (SKYLAKE_FLAGS, False),
                                             (SAPPHIRE_RAPIDS_FLAGS, True), ("no flags line\n", False)])
def test_native_bfloat16_read_from_flags(cpuinfo, native):
    assert cpu_has_native_bfloat16(cpuinfo) is native


def test_explicit_precision_kept():
    assert resolve_precision("float32", "cpu") == "float32"
    assert resolve_precision("bfloat16", "cuda") == "bfloat16"


def test_auto_is_float32_off_the_cpu():
    assert resolve_precision("auto", "cuda") == "float32"
    assert resolve_precision("auto", "mps") == "float32"


def test_auto_on_this_cpu_follows_its_flags():
    expected = "bfloat16" if cpu_has_native_bfloat16() else "float32"
    assert resolve_precision("auto", "cpu") == expected


def test_bfloat16_lean_network_close_to_float32():
    # bfloat16 keeps 8 significant bits (relative rounding 2^-9 per value). Measured over four images: the
    # activations differ from float32's by 0.3-0.4% in relative L2 norm (bound 2%), and the image gradient,
    # a sum with cancellations that also crosses ReLU masks flipped by rounding, by 3-8% (bound 15%).
    layers = ["relu1_1", "relu3_1"]
    net = prepare_for_layers(tiny_vgg(), layers, lean_backward=True)
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 50
    image = image.contiguous(memory_format=torch.channels_last)

    def run(low: bool):
        x = image.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
            features = net.extract(x, layers)
        loss = sum((value.float() ** 2).mean() for value in features.values())
        loss.backward()
        return features, x.grad

    full, full_grad = run(False)
    low, low_grad = run(True)
    for layer in layers:
        assert low[layer].dtype == torch.bfloat16
        error = torch.linalg.vector_norm(low[layer].float() - full[layer]) / torch.linalg.vector_norm(full[layer])
        assert error < 2e-2, layer
    assert low_grad.dtype == torch.float32
    error = torch.linalg.vector_norm(low_grad - full_grad) / torch.linalg.vector_norm(full_grad)
    assert error < 0.15


def test_bfloat16_weights_converted_once():
    from modelzoo.engine.lean import FrozenConv2d

    net = prepare_for_layers(tiny_vgg(), ["relu1_1"], lean_backward=True)
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    conv = next(module for module in net.layers if isinstance(module, FrozenConv2d))
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x)
        first = conv._cast[1]
        conv(x)
    assert conv._cast[1] is first
    assert first.dtype == torch.bfloat16
    with torch.no_grad():
        conv.conv.weight.mul_(2.0)  # a changed weight is converted again
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x)
    assert conv._cast[1] is not first
