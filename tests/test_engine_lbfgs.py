"""RingLBFGS against torch.optim.LBFGS (with neural-style's settings: no line search, no tolerance stop) on a small style loss.

The problem: match the Gram matrices of two random conv layers (seeded weights) for a 3x32x32 image, the
engine's style loss in miniature, so the curvature pairs are those of a real non-quadratic objective.
"""

from __future__ import annotations

import pytest
import torch

from modelzoo.engine.lbfgs import RingLBFGS
from modelzoo.engine.losses import gram_matrix

ITERATIONS = 30


def style_problem():
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(8, 3, 3, 3, generator=generator) * 0.3
    second = torch.randn(16, 8, 3, 3, generator=generator) * 0.2
    target_image = torch.rand(1, 3, 32, 32, generator=generator)
    init = torch.rand(1, 3, 32, 32, generator=generator)

    def features(image):
        relu1 = torch.relu(torch.nn.functional.conv2d(image, first, padding=1))
        relu2 = torch.relu(torch.nn.functional.conv2d(relu1, second, padding=1))
        return relu1, relu2

    with torch.no_grad():
        targets = [gram_matrix(feature) for feature in features(target_image)]

    def loss(image):
        return sum(torch.nn.functional.mse_loss(gram_matrix(feature), target) * 1e3
                   for feature, target in zip(features(image), targets))

    return init, loss


def run(make_optimizer, iterations=ITERATIONS):
    """Optimise with one step() call of ``iterations`` evaluations; return the image and loss at each one."""
    init, loss = style_problem()
    image = init.clone().requires_grad_(True)
    optimizer = make_optimizer(image)
    images, losses = [], []

    def closure():
        optimizer.zero_grad(set_to_none=True)
        value = loss(image)
        value.backward()
        images.append(image.detach().clone())
        losses.append(float(value.detach()))
        return value

    optimizer.step(closure)
    return images, losses


def torch_lbfgs(history):
    return lambda image: torch.optim.LBFGS([image], max_iter=ITERATIONS, history_size=history,
                                           tolerance_grad=-1, tolerance_change=-1, line_search_fn=None)


def ring_lbfgs(history, dtype=torch.float32):
    return lambda image: RingLBFGS(image, max_iter=ITERATIONS, history_size=history, history_dtype=dtype)


@pytest.mark.parametrize("history", [100, 4])  # 4 < 30 iterations: the ring wraps and drops the oldest pairs
def test_float32_history_follows_torch_lbfgs(history):
    expected_images, expected_losses = run(torch_lbfgs(history))
    images, losses = run(ring_lbfgs(history))
    assert len(images) == len(expected_images) == ITERATIONS
    # Same operations in the same order on float32 (on 2 CPU cores the iterates were bitwise equal). A dot
    # product over a row of the ring buffer may still sum in another order on other BLAS builds. That is a
    # relative 1e-6 per step, which L-BFGS amplifies over 30 steps. An absolute 1e-4 of the image range
    # [0, 1] allows it and still fails on any wrong pair, sign or order.
    for step, (image, expected) in enumerate(zip(images, expected_images)):
        assert torch.allclose(image, expected, rtol=0, atol=1e-4), f"iterate {step + 1} differs"
    assert losses[-1] == pytest.approx(expected_losses[-1], rel=1e-4)
    assert losses[-1] < 0.05 * losses[0]  # it optimises: 30 steps cut this loss by far more than 20x


def test_wrapped_history_differs_from_full_history():
    """With m=4 the directions after step 5 use only the last 4 pairs, so the iterates leave the m=100 path."""
    full, _ = run(ring_lbfgs(100))
    short, _ = run(ring_lbfgs(4))
    assert torch.equal(full[4], short[4])  # up to 4 pairs stored: the same directions
    assert not torch.allclose(full[-1], short[-1], atol=1e-4)


def test_bfloat16_history_converges_like_float32():
    _, exact = run(ring_lbfgs(100))
    _, rounded = run(ring_lbfgs(100, torch.bfloat16))
    # bfloat16 keeps 8 bits of each stored s and y, so the directions change. On this problem the 30-step
    # loss ratio was 0.997, and 10% is the allowance. On a 512 px engine run the loss after 40 steps was
    # about 2x float32's (docs/engine.md), so float32 stays the default.
    assert rounded[-1] == pytest.approx(exact[-1], rel=0.10), (rounded[-1], exact[-1])
    assert rounded[-1] < 0.05 * rounded[0]


def test_history_buffer_is_allocated_once():
    image = torch.zeros(1, 3, 8, 8, requires_grad=True)
    optimizer = RingLBFGS(image, max_iter=20, history_size=3, history_dtype=torch.bfloat16)
    buffer = optimizer.history

    def closure():
        optimizer.zero_grad(set_to_none=True)
        value = ((image - 1) ** 2 * torch.arange(1, 193.0).view_as(image)).sum()
        value.backward()
        return value

    optimizer.step(closure)
    assert optimizer.history is buffer
    assert buffer.shape == (2, 3, 192)
    assert buffer.dtype == torch.bfloat16
    assert optimizer.count == 3
