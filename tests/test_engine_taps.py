"""The loss taps give the same losses and image gradient as autograd differentiating the loss terms.

The reference is ``Objective(taps=False)``: the content and style terms built from ``gram_matrix`` and
``mse_loss`` and differentiated by autograd. Both compute the same float32 sums in a different order, so
values and gradients agree to 1e-5 relative (measured: about 1e-7).
"""

from __future__ import annotations

import pytest
import torch

from converters.graph import GraphSpec, Node
from converters.network import GraphNet
from modelzoo.engine.fusion import prepare_for_layers
from modelzoo.engine.network import LayerPlan
from modelzoo.engine.optimise import Objective
from modelzoo.engine.targets import compute_content_targets, compute_style_targets
from test_engine_support import tiny_vgg

TOLERANCE = 1e-5


def residual_net() -> GraphNet:
    """conv -> relu -> (conv -> relu) + skip -> relu, with a side branch "side" that nothing deeper reads."""
    generator = torch.Generator().manual_seed(3)
    nodes = [
        Node("conv1", "conv2d", ["input"], ["conv1"], {"padding": 1}),
        Node("relu1", "relu", ["conv1"], ["relu1"]),
        Node("conv2", "conv2d", ["relu1"], ["conv2"], {"padding": 1}),
        Node("relu2", "relu", ["conv2"], ["relu2"]),
        Node("side", "conv2d", ["relu1"], ["side"], {"padding": 1}),
        Node("sum", "caffe_eltwise", ["relu2", "relu1"], ["sum"], {"operation": "sum"}),
        Node("relu3", "relu", ["sum"], ["relu3"]),
    ]
    weights = {}
    for name, channels_in in (("conv1", 3), ("conv2", 8), ("side", 8)):
        weights[f"{name}.weight"] = torch.randn(8, channels_in, 3, 3, generator=generator) * (2 / (9 * channels_in)) ** 0.5
        weights[f"{name}.bias"] = torch.randn(8, generator=generator) * 0.1
    return GraphNet(GraphSpec(nodes, {"input": [1, 3, 0, 0]}, ["relu3"]), weights)


def frozen(net):
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


def objectives(net, plan: LayerPlan, channels_last: bool, **settings) -> tuple[Objective, Objective]:
    generator = torch.Generator().manual_seed(5)
    content = torch.randn(1, 3, 24, 20, generator=generator) * 40
    style = torch.randn(1, 3, 28, 28, generator=generator) * 40
    layout = torch.channels_last if channels_last else torch.contiguous_format
    content_targets = compute_content_targets(net, content.contiguous(memory_format=layout), plan.content_layers)
    style_targets = compute_style_targets(net, [style.contiguous(memory_format=layout)], [1.0], plan.style_layers)
    pair = [Objective(net, plan, content_targets, style_targets, channels_last=channels_last, taps=taps, **settings)
            for taps in (True, False)]
    return pair[0], pair[1]


def loss_and_gradient(objective: Objective, image: torch.Tensor):
    x = image.clone().requires_grad_(True)
    differentiated, total, terms = objective.evaluate(x)
    differentiated.backward()
    return float(total), {key: float(value) for key, value in terms.items()}, x.grad


def assert_same(tapped, reference):
    (total, terms, grad), (ref_total, ref_terms, ref_grad) = tapped, reference
    assert terms.keys() == ref_terms.keys()
    for key in terms:
        assert terms[key] == pytest.approx(ref_terms[key], rel=TOLERANCE), key
    assert total == pytest.approx(ref_total, rel=TOLERANCE)
    scale = ref_grad.abs().max()
    assert scale > 0
    assert float((grad - ref_grad).abs().max() / scale) < TOLERANCE


PLAN_VGG = LayerPlan(("relu2_1",), ("relu1_1", "relu2_1", "conv3_1"), (1.0, 0.5, 2.0), 5.0, 100.0, 1e-3)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("normalize", [None, "l1", "l2"])
def test_taps_match_autograd_on_vgg_chain(channels_last, normalize):
    net = prepare_for_layers(frozen(tiny_vgg()), PLAN_VGG.all_layers, lean_backward=True)
    settings = {"normalize_gradients": normalize is not None, "gradient_norm": normalize or "l1"}
    tapped, reference = objectives(net, PLAN_VGG, channels_last, **settings)
    image = torch.randn(1, 3, 24, 20, generator=torch.Generator().manual_seed(9)) * 40
    assert_same(loss_and_gradient(tapped, image), loss_and_gradient(reference, image))


def test_taps_match_autograd_on_residual_graph():
    # relu1 feeds both the residual sum and the side branch. "side" is requested but feeds no deeper layer,
    # so its tap receives only the zeros that autograd materialises. relu2 is a content and a style layer.
    plan = LayerPlan(("relu2",), ("relu1", "relu2", "side", "relu3"), (1.0, 1.0, 1.0, 1.0), 5.0, 100.0, 0.0)
    net = frozen(residual_net())
    tapped, reference = objectives(net, plan, channels_last=False)
    image = torch.randn(1, 3, 24, 20, generator=torch.Generator().manual_seed(9)) * 40
    assert_same(loss_and_gradient(tapped, image), loss_and_gradient(reference, image))


def test_gram_loss_gradient_by_hand():
    # One channel, two positions: F = [a, b], G = (a^2 + b^2) / 2, loss = w (G - t)^2, dloss/da = w (G - t) 2a.
    from modelzoo.engine.taps import StyleTap, TapRecord

    a, b, t, w = 3.0, -2.0, 4.0, 0.5
    features = torch.tensor([[[[a, b]]]], requires_grad=True)
    record = TapRecord()
    out = StyleTap.apply(features, torch.tensor([[t]]), w, 0, record, "style/x")
    out.sum().backward()  # the upstream gradient is 1 at each position
    gram = (a * a + b * b) / 2
    assert float(record.terms["style/x"]) == pytest.approx(w * (gram - t) ** 2, rel=1e-6)
    expected = [1 + w * (gram - t) * 2 * a, 1 + w * (gram - t) * 2 * b]
    assert features.grad.flatten().tolist() == pytest.approx(expected, rel=1e-6)


def test_objective_gradient_scales_tap_gradients():
    # d(3 * objective)/dx must be 3 times d(objective)/dx. The taps learn the 3 from the objective's backward.
    net = prepare_for_layers(frozen(tiny_vgg()), PLAN_VGG.all_layers, lean_backward=True)
    tapped, _ = objectives(net, PLAN_VGG, channels_last=False)
    image = torch.randn(1, 3, 24, 20, generator=torch.Generator().manual_seed(9)) * 40
    gradients = []
    for factor in (1.0, 3.0):
        x = image.clone().requires_grad_(True)
        differentiated, _, _ = tapped.evaluate(x)
        (differentiated * factor).backward()
        gradients.append(x.grad)
    # Scaling inside the sums rounds differently from scaling the result: 4e-5 relative at most, measured.
    torch.testing.assert_close(gradients[1], gradients[0] * 3.0, rtol=2e-4, atol=1e-6 * float(gradients[0].abs().max()))
