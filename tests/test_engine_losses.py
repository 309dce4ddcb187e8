"""Loss terms, the input contract, colour transforms, options and BatchNorm folding against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modelzoo.engine.colour import keep_original_colors, match_histograms, rgb_to_ycbcr, ycbcr_to_rgb
from modelzoo.engine.losses import content_loss, gram_matrix, normalized, style_loss, tv_loss_l1, tv_loss_l2
from modelzoo.engine.network import Contract
from modelzoo.engine.options import StyleOptions, parse_count, parse_number, parse_numbers
from modelzoo.engine.targets import blend_weights, compute_style_targets
from modelzoo.errors import OptionError
from test_engine_support import CONTENT_PHOTO, open_nsfw_net, tiny_vgg  # noqa: F401 (fixture)

# float32 sums of a few thousand products agree with float64 loops to about 1e-6 relative.
FLOAT32_RTOL = 1e-5


def test_gram_matrix_matches_loops():
    features = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    flat = features[0].numpy().reshape(4, 30)
    expected = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            expected[i, j] = sum(flat[i, k] * flat[j, k] for k in range(30)) / (4 * 5 * 6)
    np.testing.assert_allclose(gram_matrix(features).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_float32_gram_of_bfloat16_matches_float64(layout):
    # 300 x 70 positions span two chunks. bfloat16 values convert exactly, so only the float32 sums round.
    from modelzoo.engine.losses import GRAM_CHUNK_POSITIONS, float32_gram

    features = torch.randn(1, 8, 300, 70, generator=torch.Generator().manual_seed(4)).bfloat16()
    assert 300 * 70 > GRAM_CHUNK_POSITIONS
    gram = float32_gram(features.contiguous(memory_format=layout))
    assert gram.dtype == torch.float32
    expected = gram_matrix(features.double()).float()
    torch.testing.assert_close(gram, expected, rtol=FLOAT32_RTOL, atol=1e-6)


def test_gram_matrix_is_size_independent_for_repeated_texture():
    # A texture tiled 2 x 2 has the same per-position statistics, so the C*H*W-normalised Gram is equal.
    patch = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    tiled = patch.repeat(1, 1, 2, 2)
    torch.testing.assert_close(gram_matrix(tiled), gram_matrix(patch), rtol=1e-12, atol=1e-12)


def test_content_and_style_loss_are_mean_squared_errors():
    a, b = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    assert content_loss(a, b).item() == pytest.approx(((a - b) ** 2).mean().item(), rel=FLOAT32_RTOL)
    target = torch.randn(3, 3)
    expected = ((gram_matrix(a) - target) ** 2).mean().item()
    assert style_loss(a, target).item() == pytest.approx(expected, rel=FLOAT32_RTOL)


def lua_tv_gradient(image: np.ndarray) -> np.ndarray:
    """The TV gradient as neural-style Lua's TVLoss:updateGradInput builds it (strength 1), for C x H x W."""
    grad = np.zeros_like(image)
    x_diff = image[:, :-1, :-1] - image[:, :-1, 1:]
    y_diff = image[:, :-1, :-1] - image[:, 1:, :-1]
    grad[:, :-1, :-1] += x_diff + y_diff
    grad[:, :-1, 1:] -= x_diff
    grad[:, 1:, :-1] -= y_diff
    return grad


def test_tv_l2_gradient_is_neural_style_lua():
    image = torch.randn(1, 3, 7, 9, dtype=torch.float64, requires_grad=True)
    tv_loss_l2(image).backward()
    np.testing.assert_allclose(image.grad[0].numpy(), lua_tv_gradient(image.detach()[0].numpy()), rtol=1e-12)


def test_tv_l1_value_by_hand():
    image = torch.tensor([[[[0.0, 1.0], [3.0, 7.0]]]])
    # vertical |3-0| + |7-1| = 9, horizontal |1-0| + |7-3| = 5
    assert tv_loss_l1(image).item() == pytest.approx(14.0)


@pytest.mark.parametrize("norm,order", [("l1", 1), ("l2", 2)])
def test_normalize_gradient_sets_norm_to_weight(norm, order):
    features = torch.randn(1, 4, 6, 6, requires_grad=True)
    target = torch.randn(1, 4, 6, 6)
    content_loss(normalized(features, 3.0, norm), target).backward()
    # The gradient is divided by its norm (plus 1e-8) and multiplied by the weight, so its norm is 3.
    assert torch.linalg.vector_norm(features.grad, ord=order).item() == pytest.approx(3.0, rel=1e-5)


def test_contract_maps_a_pixel_by_hand():
    contract = Contract("BGR", 255.0, (104.0, 117.0, 123.0))
    rgb = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)
    expected = [0.6 * 255 - 104.0, 0.4 * 255 - 117.0, 0.2 * 255 - 123.0]  # B, G, R
    np.testing.assert_allclose(contract.to_network(rgb).view(3).numpy(), expected, rtol=1e-6)
    torch.testing.assert_close(contract.from_network(contract.to_network(rgb)), rgb)


def test_contract_pixel_scale_256_only_for_255_networks():
    class Card:
        class input:  # noqa: N801 - mimics the card's field name
            channel_order, value_range, mean, std = "BGR", 255, (1.0, 2.0, 3.0), (1.0, 1.0, 1.0)

    assert Contract.from_card(Card, 256.0).value_range == 256.0
    Card.input.value_range = 1.0
    assert Contract.from_card(Card, 256.0).value_range == 1.0


def test_ycbcr_matches_pillow():
    photo = Image.open(CONTENT_PHOTO).convert("RGB").resize((64, 64))
    rgb = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    pillow = np.asarray(photo.convert("YCbCr"), dtype=np.float32) / 255.0
    ours = rgb_to_ycbcr(rgb)[0].permute(1, 2, 0).numpy()
    # Pillow rounds each channel to 8 bits, so the two agree to within one level.
    assert np.abs(ours - pillow).max() <= 1.01 / 255
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, atol=1e-5, rtol=0)


def test_original_colors_keep_content_chroma():
    # Recombining changes R, G and B by the luma difference alone, which stays below 0.05 here, so no
    # colour leaves [0, 1] and clipping plays no part.
    content = torch.rand(1, 3, 16, 16) * 0.5 + 0.25
    output = content + (torch.rand(1, 3, 16, 16) - 0.5) * 0.1
    kept = keep_original_colors(content, output)
    torch.testing.assert_close(rgb_to_ycbcr(kept)[:, 1:], rgb_to_ycbcr(content)[:, 1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(rgb_to_ycbcr(kept)[:, :1], rgb_to_ycbcr(output)[:, :1], atol=1e-5, rtol=0)


def test_histogram_matching_matches_scikit_image():
    from skimage.exposure import match_histograms as skimage_match

    source = torch.rand(1, 3, 20, 30)
    reference = torch.rand(1, 3, 20, 30) ** 3
    ours = match_histograms(source, reference)
    # Same pixel count: both give each pixel the reference value of the same rank.
    theirs = skimage_match(source[0].permute(1, 2, 0).numpy(), reference[0].permute(1, 2, 0).numpy(), channel_axis=-1)
    np.testing.assert_allclose(ours[0].permute(1, 2, 0).numpy(), theirs, atol=1e-6)


def test_histogram_matching_takes_reference_distribution():
    source = torch.rand(1, 3, 10, 10)
    reference = torch.rand(1, 3, 10, 10) * 0.2 + 0.7
    matched = match_histograms(source, reference)
    for channel in range(3):
        torch.testing.assert_close(matched[0, channel].flatten().sort().values,
                                   reference[0, channel].flatten().sort().values)


def test_blend_weights_normalised():
    assert blend_weights(2, (3.0, 7.0)) == pytest.approx([0.3, 0.7])
    assert blend_weights(3, None) == pytest.approx([1 / 3] * 3)
    with pytest.raises(OptionError, match="one weight per style image"):
        blend_weights(2, (1.0,))


def test_style_targets_blend_grams():
    net = tiny_vgg()
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 24, 40)
    layers = ("relu1_1", "relu2_1")
    blended = compute_style_targets(net, [a, b], [0.3, 0.7], layers).grams
    alone_a = compute_style_targets(net, [a], [1.0], layers).grams
    alone_b = compute_style_targets(net, [b], [1.0], layers).grams
    for layer in layers:
        torch.testing.assert_close(blended[layer], 0.3 * alone_a[layer] + 0.7 * alone_b[layer])


@pytest.mark.parametrize("text,value", [("1e2", 100.0), ("5e0", 5.0), ("1e-3", 0.001), ("0.5", 0.5), ("7", 7.0)])
def test_parse_number_scientific(text, value):
    assert parse_number(text) == value


def test_parse_count_and_lists():
    assert parse_count("1e3") == 1000
    assert parse_numbers("3,7") == (3.0, 7.0)
    with pytest.raises(OptionError, match="whole number"):
        parse_count("2.5", "--iterations")
    with pytest.raises(OptionError, match="'abc'"):
        parse_number("abc", "--style-weight")


@pytest.mark.parametrize("field,value,message", [
    ("optimizer", "sgd", "must be one of lbfgs, adam"),
    ("pixel_scale", 100.0, "must be 255 or 256"),
    ("init", "no/such/file.png", "not 'image', 'random' or an existing image file"),
    ("iterations", 0, "must be a whole number > 0"),
    ("tv_weight", -1.0, "must be a finite number >= 0"),
    ("scales", (512, 256), "smallest to largest"),
    ("tile_overlap", 300, "less than half the tile"),
    ("lbfgs_history_dtype", "float16", "must be one of float32, bfloat16"),
])
def test_invalid_options_name_value(field, value, message):
    changes = {field: value}
    if field == "tile_overlap":
        changes["tile"] = 512
    with pytest.raises(OptionError, match=message):
        StyleOptions().with_changes(**changes)


def test_unknown_option_rejected():
    with pytest.raises(OptionError, match="unknown option"):
        StyleOptions().with_changes(style_wieght=1.0)


@pytest.mark.realmodel
def test_batchnorm_folding_keeps_activations(open_nsfw_net):
    from modelzoo.engine.fusion import prepare_for_layers

    layers = ["conv_1", "relu_1", "relu_stage0_block0", "relu_stage1_block0", "bn_stage1_block1_branch2a"]
    folded = prepare_for_layers(open_nsfw_net, layers)
    assert len(folded.spec.nodes) < open_nsfw_net.spec.node_names.index("bn_stage1_block1_branch2a") + 1
    x = torch.rand(1, 3, 64, 80) * 255 - 120
    gradients = []
    for net in (open_nsfw_net, folded):
        image = x.clone().requires_grad_(True)
        features = net.extract(image, layers)
        sum(value.square().mean() for value in features.values()).backward()
        gradients.append(image.grad)
        if net is open_nsfw_net:
            expected = {name: value.detach() for name, value in features.items()}
        else:
            actual = {name: value.detach() for name, value in features.items()}
    for layer in layers:
        scale = expected[layer].abs().max()
        # Folding reorders float32 arithmetic; differences stay near float32 rounding (1e-7 relative).
        assert ((actual[layer] - expected[layer]).abs().max() / scale).item() < 1e-5, layer
    # The in-place ReLUs must not change the gradient that reaches the image.
    assert ((gradients[1] - gradients[0]).abs().max() / gradients[0].abs().max()).item() < 1e-4


def test_relu_in_place_only_after_private_conv():
    from modelzoo.engine.fusion import InPlaceReLU, prepare_for_layers

    net = tiny_vgg()
    prepared = prepare_for_layers(net, ["conv2_1", "relu3_1"])
    kinds = {node.name: type(module) for node, module in zip(prepared.spec.nodes, prepared.layers)}
    assert kinds["relu1_1"] is InPlaceReLU
    assert kinds["relu2_1"] is not InPlaceReLU  # conv2_1 is requested, so its value must survive
    assert kinds["relu3_1"] is InPlaceReLU
    image = torch.rand(1, 3, 32, 32)
    expected = net.extract(image, ["conv2_1", "relu3_1"])
    actual = prepared.extract(image, ["conv2_1", "relu3_1"])
    torch.testing.assert_close(actual["conv2_1"], expected["conv2_1"])
    torch.testing.assert_close(actual["relu3_1"], expected["relu3_1"])
