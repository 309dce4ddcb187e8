"""AI upscaling through spandrel, with architectures spandrel builds and weights these tests create.

The reference for every output is the architecture's own forward pass on the whole image, run directly
on the ``nn.Module`` the test built, independent of nstzoo's loading and tiling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN
from torch import nn

from fixtures_http import sha256, write_card
from modelzoo import upscale
from modelzoo.errors import OptionError
from registry.loader import Registry

ARCHITECTURES = {
    # name: (builder, spandrel's architecture name, scale, receptive-field radius in input pixels)
    "rrdb_x4": (lambda: ESRGAN(num_filters=16, num_blocks=1, scale=4), "ESRGAN", 4, 24),
    "rrdb_x2": (lambda: ESRGAN(num_filters=16, num_blocks=1, scale=2), "ESRGAN", 2, 24),
    "compact_x4": (lambda: Compact(num_feat=16, num_conv=4, upscale=4), "RealESRGAN Compact", 4, 6),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """Build a random-weight network whose outputs vary inside [0, 1] instead of being clipped flat.

    The last convolution is rescaled so its output has a standard deviation of 0.1 on the test image.
    ESRGAN's output is that convolution, so it gets a bias of 0.5 (mid-grey); Compact adds its output to
    the upscaled input, so its bias stays 0.
    """
    torch.manual_seed(seed)
    network = ARCHITECTURES[name][0]().eval()
    last = [module for module in network.modules() if isinstance(module, nn.Conv2d)][-1]
    outputs = []
    hook = last.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
    with torch.no_grad():
        last.bias.zero_()
        network(image_tensor())
        last.weight.mul_(0.1 / float(outputs[0].std()))
        last.bias.fill_(0.5 if isinstance(network, ESRGAN) else 0.0)
    hook.remove()
    return network


def save_weights(network: nn.Module, folder: Path, name: str, suffix: str) -> Path:
    state = {key: value.contiguous() for key, value in network.state_dict().items()}
    path = folder / f"{name}{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"params_ema": state}, path)  # the layout of Real-ESRGAN's release files
    return path


def image_tensor(height: int = 40, width: int = 52, seed: int = 1) -> torch.Tensor:
    import skimage.data

    array = skimage.data.astronaut()[100:100 + height, 180:180 + width].astype(np.float32) / 255.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())[None]


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_loaded_model_matches_its_network(tmp_path: Path, name: str, suffix: str) -> None:
    network = build(name)
    descriptor = upscale.load_upscaler(save_weights(network, tmp_path, name, suffix))
    _, architecture, scale, _ = ARCHITECTURES[name]
    assert descriptor.architecture.name == architecture
    assert descriptor.scale == scale

    image = image_tensor()
    result = upscale.upscale_tensor(descriptor, image)
    with torch.no_grad():
        expected = network(image).clamp(0, 1)
    assert result.shape == (1, 3, 40 * scale, 52 * scale)
    assert float(result.std()) > 0.01, "outputs are clipped flat; the test would prove nothing"
    # The same module with the same weights on the same input: only float rounding may differ.
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_tiled_matches_untiled(tmp_path: Path, name: str) -> None:
    # With a pad at least the receptive-field radius, each tile's core reads exactly the pixels it reads in
    # the whole image. So tiles agree with the untiled output up to the float rounding of convolutions of
    # different sizes (bound 1e-5 on [0, 1] values).
    network = build(name)
    descriptor = upscale.load_upscaler(save_weights(network, tmp_path, name, ".safetensors"))
    radius = ARCHITECTURES[name][3]
    image = image_tensor(64, 80)
    whole = upscale.upscale_tensor(descriptor, image)
    tiled = upscale.upscale_tensor(descriptor, image, tile=24, pad=radius)
    assert (tiled - whole).abs().max() <= 1e-5


def test_tiling_without_enough_pad_differs(tmp_path: Path) -> None:
    # The control for the test above: a 1-pixel pad cuts the 6-pixel receptive field, and the tile
    # borders must show (measured max difference about 0.1).
    network = build("compact_x4")
    descriptor = upscale.load_upscaler(save_weights(network, tmp_path, "compact", ".safetensors"))
    image = image_tensor(64, 80)
    whole = upscale.upscale_tensor(descriptor, image)
    tiled = upscale.upscale_tensor(descriptor, image, tile=24, pad=1)
    assert (tiled - whole).abs().max() > 1e-3


class NotATensor:
    """A pickled object that a weights-only load must reject."""


def test_pickled_objects_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"params_ema": build("compact_x4").state_dict(), "extra": NotATensor()}, path)
    with pytest.raises(upscale.UpscaleError, match="cannot read upscaler weights"):
        upscale.load_upscaler(path)


def test_unknown_architecture_rejected(tmp_path: Path) -> None:
    path = tmp_path / "unknown.safetensors"
    save_file({"encoder.weight": torch.zeros(4, 3, 3, 3)}, str(path))
    with pytest.raises(upscale.UpscaleError, match="does not recognise the architecture"):
        upscale.load_upscaler(path)


def test_features_card_is_not_an_upscaler(nstzoo_home: Path) -> None:
    with pytest.raises(OptionError, match="not an upscaler"):
        upscale.resolve_model("vgg19")


def test_upscale_image_keeps_alpha(tmp_path: Path) -> None:
    path = save_weights(build("compact_x4"), tmp_path, "compact", ".safetensors")
    rgba = Image.fromarray((image_tensor()[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8), "RGB").convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 128))
    result = upscale.upscale_image(rgba, path, tile=16)
    assert result.mode == "RGBA"
    assert result.size == (52 * 4, 40 * 4)
    assert set(np.asarray(result.getchannel("A")).ravel().tolist()) == {128}


def test_cli_upscale(tmp_path: Path, nstzoo_home: Path) -> None:
    from modelzoo.cli.main import main

    weights = save_weights(build("rrdb_x2"), tmp_path, "rrdb", ".pth")
    source = tmp_path / "in.png"
    Image.fromarray((image_tensor()[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(source)
    output = tmp_path / "out.png"
    main(["upscale", str(source), "-o", str(output), "--model", str(weights), "--tile", "16"])
    assert Image.open(output).size == (52 * 2, 40 * 2)


def test_card_fetched_from_loopback(tmp_path: Path, nstzoo_home: Path, http_server) -> None:
    weights = save_weights(build("compact_x4"), tmp_path, "compact", ".pth")
    data = weights.read_bytes()
    route = http_server.add("compact.pth", data)
    write_card(nstzoo_home, "test_upscaler", [{"name": "compact.pth", "role": "weights", "size": len(data),
                                               "sha256": sha256(data), "sources": [http_server.url("compact.pth")]}],
               task="upscale", upscale={"scale": 4, "architecture": "RealESRGAN Compact"})
    image = Image.fromarray((image_tensor()[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))

    first = upscale.upscale_image(image, "test_upscaler")
    second = upscale.upscale_image(image, "test_upscaler")

    assert first.size == (52 * 4, 40 * 4)
    assert route.requests == 1, "the second call must use the cached file"
    assert np.array_equal(np.asarray(first), np.asarray(second))
    assert not (nstzoo_home / "models" / "test_upscaler" / "converted").exists()


def test_builtin_upscaler_cards() -> None:
    cards = [card for card in Registry.load() if card.task == "upscale"]
    names = {card.name for card in cards}
    assert {"realesrgan_x4plus", "realesrgan_x2plus", "realesrgan_x4plus_anime_6b"} <= names
    for card in cards:
        weights = card.weights_file
        assert card.format == "pytorch"
        assert card.upscale.architecture in ("ESRGAN", "RealESRGAN Compact")
        assert weights.sha256 and weights.size
        assert weights.sources[0].location.startswith("https://github.com/xinntao/Real-ESRGAN/releases/download/")
        assert weights.sources[0].location.endswith("/" + weights.name)
