"""PyTorch and safetensors state dicts: safe loading, layouts from weights (never from file names), key renames.

Reference for the VGG layouts: torchvision's own VGG ``features`` (an architecture definition independent
of nstzoo's layout tables) loaded with the same state dict. Both sides run PyTorch's float32 kernels on
the same weights in the same order, so they must agree to 1e-6 relative error.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.vgg import make_layers

from converters.formats import ConvertOptions, convert, detect_format
from converters.network import GraphNet
from converters.pytorch import UnsafeCheckpointError
from converters.errors import ConversionError

# Tiny channel counts keep the files small; the layouts depend on the number of convolutions and the
# positions of the pools, not on the widths.
VGG19_TINY = [4, 4, "M", 4, 4, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8, "M"]
VGG16_TINY = [4, 4, "M", 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M", 8, 8, 8, "M"]
VGG19_NAMES_SAMPLE = ["conv1_1", "relu1_1", "pool1", "relu4_2", "conv5_4", "pool5"]


def vgg_features(config: list) -> nn.Sequential:
    torch.manual_seed(0)
    return make_layers(config).eval()


def feature_state(config: list) -> dict[str, torch.Tensor]:
    return {f"features.{key}": value for key, value in vgg_features(config).state_dict().items()}


def nin_state() -> dict[str, torch.Tensor]:
    """NIN ImageNet's feature convolutions at their neural-style-pt indices, with random weights."""
    generator = torch.Generator().manual_seed(1)
    shapes = {0: (96, 3, 11, 11), 2: (96, 96, 1, 1), 4: (96, 96, 1, 1), 7: (256, 96, 5, 5), 9: (256, 256, 1, 1),
              11: (256, 256, 1, 1), 14: (384, 256, 3, 3), 16: (384, 384, 1, 1), 18: (384, 384, 1, 1),
              22: (1024, 384, 3, 3), 24: (1024, 1024, 1, 1), 26: (1000, 1024, 1, 1)}
    state = {}
    for index, shape in shapes.items():
        state[f"features.{index}.weight"] = torch.randn(shape, generator=generator) * 0.05
        state[f"features.{index}.bias"] = torch.randn(shape[0], generator=generator) * 0.05
    return state


def test_vgg19_layout_matches_torchvision(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save(feature_state(VGG19_TINY), path)
    spec, weights = convert("pytorch", path, ConvertOptions())
    assert spec.metadata["layout"] == "nspt_vgg19"
    assert set(VGG19_NAMES_SAMPLE) <= set(spec.node_names)
    x = torch.rand(1, 3, 64, 64)
    net = GraphNet(spec, weights)
    features = vgg_features(VGG19_TINY)
    with torch.no_grad():
        # relu4_2 is torchvision's features[22] (conv4_2 at 21); pool5 is the last module.
        ours = net.extract(x, ["relu4_2", "pool5"])
        assert torch.allclose(ours["relu4_2"], features[:23](x), rtol=1e-6, atol=1e-7)
        assert torch.allclose(ours["pool5"], features(x), rtol=1e-6, atol=1e-7)


def test_architecture_from_weights_not_file_name(tmp_path: Path) -> None:
    """'pruning' contains 'nin'; the file names below all point at the wrong architecture."""
    vgg16 = tmp_path / "vgg16_pruning.pth"
    torch.save(feature_state(VGG16_TINY), vgg16)
    nin = tmp_path / "vgg19-d01eb7cb.pth"
    torch.save(nin_state(), nin)
    assert convert("pytorch", vgg16, ConvertOptions())[0].metadata["layout"] == "nspt_vgg16"
    spec, _ = convert("pytorch", nin, ConvertOptions())
    assert spec.metadata["layout"] == "nspt_nin"
    assert "relu4" not in spec.node_names  # NIN's ReLU names skip relu4
    assert spec.node_names[:3] == ["conv1", "relu0", "cccp1"]


def test_nin_output_size_with_ceil_pools(tmp_path: Path) -> None:
    """224 input: conv1 11x11/4 -> 54, three 3x3/2 ceil pools -> 27, 13, 6, then the 6x6 average -> 1."""
    path = tmp_path / "nin.safetensors"
    from safetensors.torch import save_file

    save_file(nin_state(), str(path))
    assert detect_format(path)[0] == "safetensors"
    net = GraphNet(*convert("safetensors", path, ConvertOptions()))
    with torch.no_grad():
        values = net.extract(torch.rand(1, 3, 224, 224), ["relu0", "pool1", "pool2", "pool3", "pool4"])
    assert [tuple(values[name].shape[2:]) for name in ("relu0", "pool1", "pool2", "pool3", "pool4")] == [
        (54, 54), (27, 27), (13, 13), (6, 6), (1, 1)]


def test_shifted_classifier_keys(tmp_path: Path) -> None:
    """Old pytorch-vgg conversions put Dropout first: classifier.1/.4 instead of .0/.3."""
    state = feature_state(VGG19_TINY)
    generator = torch.Generator().manual_seed(2)
    for index, shape in ((1, (16, 8 * 2 * 2)), (4, (16, 16)), (6, (10, 16))):
        state[f"classifier.{index}.weight"] = torch.randn(shape, generator=generator)
        state[f"classifier.{index}.bias"] = torch.randn(shape[0], generator=generator)
    path = tmp_path / "old.pth"
    torch.save(state, path)
    with pytest.raises(ConversionError, match="rename_keys"):
        convert("pytorch", path, ConvertOptions())
    renames = (("classifier.1.", "classifier.0."), ("classifier.4.", "classifier.3."))
    spec, weights = convert("pytorch", path, ConvertOptions(rename_keys=renames))
    assert torch.equal(weights["fc6.weight"], state["classifier.1.weight"])
    assert torch.equal(weights["fc7.weight"], state["classifier.4.weight"])
    with torch.no_grad():
        assert GraphNet(spec, weights)(torch.rand(1, 3, 64, 64)).shape == (1, 10)


def test_wrong_layout_names_counts(tmp_path: Path) -> None:
    path = tmp_path / "vgg16.pth"
    torch.save(feature_state(VGG16_TINY), path)
    with pytest.raises(ConversionError, match="layout nspt_vgg19 has 16 convolutions, but the weights have 13"):
        convert("pytorch", path, ConvertOptions(layout="nspt_vgg19"))


def test_zip_checkpoint_and_legacy_formats(tmp_path: Path) -> None:
    """torch >= 1.6 zip files, the legacy pickle format, and a zip wrapping one checkpoint all load."""
    conv = nn.Conv2d(3, 3, 1)
    state = {f"features.0.{key}": value for key, value in conv.state_dict().items()}
    modern = tmp_path / "modern.pth"
    torch.save(state, modern)
    legacy = tmp_path / "legacy.pth"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    wrapped = tmp_path / "wrapped.zip"
    with zipfile.ZipFile(wrapped, "w") as archive:
        archive.write(legacy, "inner/legacy.pth")
    assert detect_format(legacy)[1].startswith("pickle stream")
    for path in (modern, legacy, wrapped):
        spec, weights = convert("pytorch", path, ConvertOptions(layout="nspt_vgg"))
        assert torch.equal(weights["conv1_1.weight"], conv.weight.detach())


class CreatesFile:
    """Unpickling this object would open (and so create) a file."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_malicious_checkpoint_rejected_without_running(tmp_path: Path) -> None:
    target = tmp_path / "created_by_unpickling"
    path = tmp_path / "model.pth"
    with path.open("wb") as handle:
        pickle.dump({"features.0.weight": CreatesFile(target)}, handle, protocol=2)
    assert not target.exists()
    with pytest.raises(UnsafeCheckpointError, match="rejected without running it") as caught:
        convert("pytorch", path, ConvertOptions())
    assert "io.open" in str(caught.value) or "builtins.open" in str(caught.value)
    assert not target.exists()
    # The same payload inside torch's zip format is rejected the same way.
    zipped = tmp_path / "model_zip.pth"
    torch.save({"features.0.weight": CreatesFile(target)}, zipped)
    with pytest.raises(UnsafeCheckpointError):
        convert("pytorch", zipped, ConvertOptions())
    assert not os.path.exists(target)


def test_module_pickle_asks_for_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "module.pth"
    torch.save(nn.Conv2d(3, 3, 1), path)
    with pytest.raises(UnsafeCheckpointError, match=r"torch.save\(model.state_dict\(\), PATH\)"):
        convert("pytorch", path, ConvertOptions())
