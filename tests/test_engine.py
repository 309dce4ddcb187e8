"""The engine on a small real network: every option changes what it should, events, errors.

Each run is a few L-BFGS iterations at 32-48 pixels on ``tiny_vgg`` (random VGG-shaped weights), so a
difference from the baseline shows the option reached the optimisation, and equality shows it did not
disturb what it must not.
"""

from __future__ import annotations

import pytest
import torch

from converters.errors import UnknownLayerError
from modelzoo.engine import Progress, StyleOptions, stylize
from modelzoo.engine.colour import rgb_to_ycbcr
from modelzoo.errors import OptionError
from test_engine_support import CONTENT_PHOTO, GREAT_WAVE, KANDINSKY, VAN_GOGH, tiny_vgg, tiny_vgg_with_card

BASE = {"image_size": 32, "iterations": 6, "seed": 0, "precision": "float32"}  # the same on every CPU


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run these tiny networks on one thread: on a busy 2-core machine, two threads make them 3x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(net=None, style=VAN_GOGH, **changes):
    options = {**BASE, **changes}
    return stylize(CONTENT_PHOTO, style, model=net or tiny_vgg_with_card(), **options)


@pytest.fixture(scope="module")
def baseline():
    return run()


def differs(a, b) -> bool:
    return a.image.shape != b.image.shape or (a.image - b.image).abs().max().item() > 1e-5


def test_baseline_lowers_loss(baseline):
    assert baseline.image.shape == (1, 3, 32, 32)
    assert len(baseline.history) == 6
    assert baseline.history[-1]["total"] < baseline.history[0]["total"]


def test_card_defaults_used(baseline):
    assert baseline.plan.content_layers == ("relu2_1",)
    assert baseline.plan.style_layers == ("relu1_1", "relu2_1", "relu3_1")
    assert (baseline.plan.content_weight, baseline.plan.style_weight, baseline.plan.tv_weight) == (5.0, 100.0, 1e-3)


def test_card_layer_weights_used():
    result = run(tiny_vgg_with_card(style_layer_weights=[4.0, 2.0, 1.0]), iterations=1)
    assert result.plan.style_layer_weights == (4.0, 2.0, 1.0)


# Each option set away from its default must change the output.
CHANGES = {
    "content_layers": {"content_layers": ("relu1_1",)},
    "style_layers": {"style_layers": ("relu1_1",)},
    "conv_layers": {"content_layers": ("conv2_1",), "style_layers": ("conv1_1", "conv3_1")},
    "style_layer_weights": {"style_layer_weights": (10.0, 1.0, 0.1)},
    "content_weight": {"content_weight": 5e2},
    "style_weight": {"style_weight": 1e4},
    "tv_weight": {"tv_weight": 1e-1},
    "tv_form": {"tv_form": "l1", "tv_weight": 1e-1},
    "normalize_gradients": {"normalize_gradients": True},
    "normalize_weights": {"normalize_weights": True},
    "pooling": {"pooling": "avg"},
    "pixel_scale": {"pixel_scale": 256.0},
    "init_random": {"init": "random"},
    "init_path": {"init": str(KANDINSKY)},
    "optimizer": {"optimizer": "adam"},
    "lbfgs_history": {"lbfgs_history": 1},
    "iterations": {"iterations": 3},
    "style_scale": {"style_scale": 0.5},
    "original_colors": {"original_colors": True},
    "color_transfer": {"color_transfer": "histogram"},
    "scales": {"scales": (16, 32)},
    "tile": {"tile": 24, "tile_overlap": 6},
    "precision": {"precision": "bfloat16"},
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_option_reaches_engine(baseline, name):
    assert differs(run(**CHANGES[name]), baseline)


def test_gradient_norm_choice_matters():
    l1 = run(normalize_gradients=True, gradient_norm="l1")
    l2 = run(normalize_gradients=True, gradient_norm="l2")
    assert differs(l1, l2)


def test_learning_rate_reaches_adam():
    assert differs(run(optimizer="adam", learning_rate=1.0), run(optimizer="adam", learning_rate=20.0))


def test_image_size_sets_longest_side():
    result = stylize(VAN_GOGH, GREAT_WAVE, model=tiny_vgg_with_card(), image_size=40, iterations=1)
    assert max(result.image.shape[-2:]) == 40
    assert result.image.shape[-2:] == (31, 40)  # van Gogh is 512 x 401


def test_seeded_random_init_reproducible():
    first = run(init="random", seed=3)
    second = run(init="random", seed=3)
    assert torch.equal(first.image, second.image)
    assert differs(first, run(init="random", seed=4))


def test_style_blend_weights_move_result():
    styles = [VAN_GOGH, GREAT_WAVE]
    mostly_first = run(style=styles, style_blend_weights=(9.0, 1.0))
    mostly_second = run(style=styles, style_blend_weights=(1.0, 9.0))
    assert differs(mostly_first, mostly_second)
    # Weights (1, 0) are the first style alone.
    alone = run(style=VAN_GOGH)
    torch.testing.assert_close(run(style=styles, style_blend_weights=(1.0, 0.0)).image, alone.image)


def test_style_folder_is_every_image(tmp_path):
    import shutil

    for path in (VAN_GOGH, GREAT_WAVE):
        shutil.copy(path, tmp_path / path.name)
    from_folder = run(style=tmp_path)
    from_list = run(style=[GREAT_WAVE, VAN_GOGH])  # the folder is read in name order
    torch.testing.assert_close(from_folder.image, from_list.image)


def test_devices_split_matches_one_device(baseline):
    split = run(devices=("cpu", "cpu"), split_at=(3,))
    # A split network runs PyTorch's own modules, one device the lean ones. Their max pooling returns NHWC
    # where PyTorch's returns NCHW here, so later convolutions sum in another order. The first two iterations
    # agree to float32 rounding, and the L-BFGS steps after them amplify it, as in the NHWC test below.
    for ours, theirs in zip(split.history[:2], baseline.history[:2]):
        assert ours["total"] == pytest.approx(theirs["total"], rel=1e-6)
    assert (baseline.image - split.image).abs().mean().item() < 2e-3


def test_channels_last_changes_result_by_rounding_only(baseline):
    nchw = run(channels_last=False)
    # 10 L-BFGS iterations amplify float32 rounding differences of the convolutions; a different
    # result would differ by the whole stylization (about 0.1 to 0.5 per pixel).
    assert (baseline.image - nchw.image).abs().mean().item() < 2e-3


def test_cudnn_flags_set():
    run(iterations=1, cudnn=False, cudnn_autotune=True)
    assert torch.backends.cudnn.enabled is False
    assert torch.backends.cudnn.benchmark is True
    run(iterations=1)
    assert torch.backends.cudnn.enabled is True
    assert torch.backends.cudnn.benchmark is False


def test_iterations_per_scale():
    result = run(scales=(16, 32), iterations_per_scale=(4, 2))
    assert len(result.history) == 6
    assert result.sizes == [16, 32]


def test_progress_events():
    events: list[Progress] = []
    run(iterations=6, print_every=3, save_every=2, callback=events.append)
    assert [event.iteration for event in events] == [1, 2, 3, 4, 5, 6]
    assert [event.print_due for event in events] == [False, False, True, False, False, True]
    assert [event.snapshot is not None for event in events] == [False, True, False, True, False, True]
    last = events[-1]
    assert set(last.losses) == {"content", "style", "tv", "total"}
    assert last.losses["total"] == pytest.approx(last.losses["content"] + last.losses["style"] + last.losses["tv"], rel=1e-5)
    assert set(last.layer_losses) == {"content/relu2_1", "style/relu1_1", "style/relu2_1", "style/relu3_1"}
    assert last.snapshot.shape == (1, 3, 32, 32)
    assert last.iterations_per_second > 0
    assert last.seconds_left == 0


def test_callback_false_stops():
    seen = []

    def stop_at_three(event):
        seen.append(event.iteration)
        return event.iteration < 3

    result = run(iterations=20, callback=stop_at_three)
    assert seen == [1, 2, 3]
    assert len(result.history) == 3


def test_snapshot_applies_original_colors():
    events: list[Progress] = []
    result = run(original_colors=True, save_every=6, callback=events.append)
    torch.testing.assert_close(events[-1].snapshot, result.image, atol=1e-6, rtol=0)


def test_unknown_layer_lists_valid_names():
    with pytest.raises(UnknownLayerError) as caught:
        run(content_layers=("relu4_2",))
    message = str(caught.value)
    assert "relu4_2" in message
    assert "relu1_1" in message
    assert "pool3" in message


def test_bare_network_needs_layers_it_has():
    # Without a card the Gatys VGG-19 layers are the fallback, which this small net does not have.
    with pytest.raises(UnknownLayerError, match="relu4_2"):
        stylize(CONTENT_PHOTO, VAN_GOGH, model=tiny_vgg(), image_size=32, iterations=1)


def test_blend_weight_count_checked():
    with pytest.raises(OptionError, match="one weight per style image"):
        run(style=[VAN_GOGH, GREAT_WAVE], style_blend_weights=(1.0, 2.0, 3.0))


def test_layer_weight_count_checked():
    with pytest.raises(OptionError, match="one weight per style layer"):
        run(style_layer_weights=(1.0,))


def test_original_colors_keep_chroma_of_content():
    result = run(original_colors=True)
    from modelzoo.engine.multiscale import resize_longest
    from modelzoo.images import load_image

    content = resize_longest(load_image(CONTENT_PHOTO), 32).clamp(0, 1)
    chroma_error = (rgb_to_ycbcr(result.image)[:, 1:] - rgb_to_ycbcr(content)[:, 1:]).abs()
    # Exact except where clipping to [0, 1] cuts a colour; the mean stays within 1/255.
    assert chroma_error.mean().item() < 1 / 255


def test_style_options_dataclass_defaults():
    options = StyleOptions()
    assert (options.init, options.optimizer, options.iterations, options.image_size) == ("image", "lbfgs", 1000, 512)
    assert (options.lbfgs_history, options.learning_rate, options.pixel_scale) == (100, 1e1, 255.0)
    assert (options.tv_form, options.gradient_norm, options.pooling) == ("l2", "l1", None)
