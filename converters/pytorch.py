"""PyTorch ``.pth``/``.pt`` checkpoints and ``.safetensors`` state dicts of neural-style-pt networks.

A state dict contains weights but no architecture. The architecture comes from the card's ``layout`` or, when
the card names none, from the keys and shapes of the weights; never from the file name (neural-style-pt
chose by file name and took ``channel_pruning.pth`` for NIN because "pruning" contains "nin").

Layouts (the ``features.N`` keys of neural-style-pt's models, named with the Caffe layer names):

- ``nspt_vgg19``, ``nspt_vgg16``: VGG with 16 or 13 3x3 convolutions, and ``nspt_vgg`` for any VGG-style
  stack (the channel-pruned VGG-16, for instance). Each convolution is followed by a ReLU, and a 2x2
  max-pool ends each block. An optional torchvision-style classifier becomes fc6, relu6, drop6, fc7,
  relu7, drop7, fc8.
- ``nspt_nin``: Network-in-Network ImageNet (Lin et al., 2014), whose strides and paddings are fixed by
  the published Caffe model.

``.pth`` files are always read with ``torch.load(..., weights_only=True)``, which rejects pickles that
would construct anything but tensors and plain containers.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from converters.errors import ConversionError
from converters.graph import GraphSpec, Node

logger = logging.getLogger(__name__)

LAYOUTS = ("nspt_vgg19", "nspt_vgg16", "nspt_vgg", "nspt_nin")
VGG_CONV_COUNTS = {"nspt_vgg19": 16, "nspt_vgg16": 13}
INPUT_NAME = "input"
FEATURE_KEY = re.compile(r"^features\.(\d+)\.(weight|bias)$")

# NIN ImageNet: (features index, name, kind, kernel, stride, padding). Kernel sizes are checked against the
# weights; strides and paddings are those of the published Caffe model (mavenlin's model-zoo gist), and
# the ReLU names skip relu4 as neural-style-pt's names do.
NIN_LAYERS: tuple[tuple[int, str, str, int, int, int], ...] = (
    (0, "conv1", "conv", 11, 4, 0), (1, "relu0", "relu", 0, 0, 0),
    (2, "cccp1", "conv", 1, 1, 0), (3, "relu1", "relu", 0, 0, 0),
    (4, "cccp2", "conv", 1, 1, 0), (5, "relu2", "relu", 0, 0, 0),
    (6, "pool1", "maxpool", 3, 2, 0),
    (7, "conv2", "conv", 5, 1, 2), (8, "relu3", "relu", 0, 0, 0),
    (9, "cccp3", "conv", 1, 1, 0), (10, "relu5", "relu", 0, 0, 0),
    (11, "cccp4", "conv", 1, 1, 0), (12, "relu6", "relu", 0, 0, 0),
    (13, "pool2", "maxpool", 3, 2, 0),
    (14, "conv3", "conv", 3, 1, 1), (15, "relu7", "relu", 0, 0, 0),
    (16, "cccp5", "conv", 1, 1, 0), (17, "relu8", "relu", 0, 0, 0),
    (18, "cccp6", "conv", 1, 1, 0), (19, "relu9", "relu", 0, 0, 0),
    (20, "pool3", "maxpool", 3, 2, 0),
    (21, "drop", "dropout", 0, 0, 0),
    (22, "conv4-1024", "conv", 3, 1, 1), (23, "relu10", "relu", 0, 0, 0),
    (24, "cccp7-1024", "conv", 1, 1, 0), (25, "relu11", "relu", 0, 0, 0),
    (26, "cccp8-1024", "conv", 1, 1, 0), (27, "relu12", "relu", 0, 0, 0),
    (28, "pool4", "avgpool", 6, 1, 0),
)

# torchvision's VGG classifier: Linear at 0, 3 and 6. Conversions made with pytorch-vgg put a Dropout
# first, which shifts the first two Linear layers to 1 and 4.
CLASSIFIER_LINEAR = (0, 3, 6)
SHIFTED_CLASSIFIER = {"classifier.1.": "classifier.0.", "classifier.4.": "classifier.3."}


class UnsafeCheckpointError(ConversionError, pickle.UnpicklingError):
    """A checkpoint's pickle wants to build objects other than tensors; it was not run."""


# --- reading ----------------------------------------------------------------------------------------


def _unwrap(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """Return the state dict inside a loaded checkpoint (a bare dict, or under state_dict/model)."""
    if isinstance(loaded, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(loaded.get(key), dict):
                logger.info("%s: using the '%s' entry of the checkpoint", path.name, key)
                loaded = loaded[key]
                break
        tensors = {str(key): value for key, value in loaded.items() if isinstance(value, torch.Tensor)}
        if tensors:
            return tensors
    raise ConversionError(f"{path} contains a {type(loaded).__name__} without tensors, not a state dict; "
                          "save the model with torch.save(model.state_dict(), PATH)")


def _legacy_single_member_zip(path: Path) -> str | None:
    """Return the member of a zip that wraps one checkpoint file (not torch's own zip format), or None."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        names = [name for name in archive.namelist() if not name.endswith("/")]
    torch_zip = any(name.endswith("data.pkl") for name in names)
    return names[0] if len(names) == 1 and not torch_zip else None


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.pth``/``.pt`` file with ``weights_only=True`` and return its state dict."""
    member = _legacy_single_member_zip(path)
    if member is not None:
        logger.info("%s: reading the single file '%s' inside the zip archive", path.name, member)
        with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as folder:
            extracted = Path(archive.extract(member, folder))
            return load_checkpoint(extracted)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL [\w.]+", str(error))  # torch names the global it rejected
        first_line = found.group(0) if found else type(error).__name__
        raise UnsafeCheckpointError(
            f"{path}: rejected without running it: its pickle needs more than tensors and plain containers "
            f"({first_line}). nstzoo never unpickles arbitrary objects; re-save the weights with "
            "torch.save(model.state_dict(), PATH) or as safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ConversionError(f"{path} is not a readable PyTorch checkpoint: {error}") from error
    return _unwrap(loaded, path)


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read every tensor of a ``.safetensors`` file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ConversionError(f"{path} is not a readable safetensors file: {error}") from error


def rename_keys(weights: dict[str, torch.Tensor], renames: tuple[tuple[str, str], ...]) -> dict[str, torch.Tensor]:
    """Replace the prefix ``old`` of every key by ``new``, for each (old, new) pair in order."""
    renamed = dict(weights)
    for old, new in renames:
        renamed = {(new + key[len(old):] if key.startswith(old) else key): value for key, value in renamed.items()}
    return renamed


# --- layouts ----------------------------------------------------------------------------------------


def _feature_convs(weights: dict[str, torch.Tensor]) -> list[int]:
    indices = {int(match.group(1)) for key in weights if (match := FEATURE_KEY.match(key)) and match.group(2) == "weight"}
    return sorted(index for index in indices if weights[f"features.{index}.weight"].dim() == 4)


def detect_layout(weights: dict[str, torch.Tensor]) -> str:
    """Return the layout that the keys and weight shapes show, or raise naming what was found."""
    convs = _feature_convs(weights)
    if not convs:
        sample = ", ".join(sorted(weights)[:8])
        raise ConversionError(f"the state dict has no features.N.weight convolutions (keys: {sample}, ...); "
                              f"set the card's layout to one of {', '.join(LAYOUTS)}")
    first = weights[f"features.{convs[0]}.weight"]
    if tuple(first.shape[2:]) == (11, 11) and len(convs) == 12:
        return "nspt_nin"
    if all(tuple(weights[f"features.{index}.weight"].shape[2:]) == (3, 3) for index in convs):
        return {16: "nspt_vgg19", 13: "nspt_vgg16"}.get(len(convs), "nspt_vgg")
    shapes = ", ".join(f"features.{index}: {tuple(weights[f'features.{index}.weight'].shape)}" for index in convs[:4])
    raise ConversionError(f"the convolutions ({shapes}, ...) match no known layout; set the card's layout to "
                          f"one of {', '.join(LAYOUTS)}")


def _conv_node(name: str, source: str, weights: dict[str, torch.Tensor], out: dict[str, torch.Tensor],
               previous: str, stride: int, padding: int) -> Node:
    out[f"{name}.weight"] = weights[f"{source}.weight"]
    if f"{source}.bias" in weights:
        out[f"{name}.bias"] = weights[f"{source}.bias"]
    return Node(name, "conv2d", [previous], [name], {"stride": stride, "padding": padding})


def build_vgg(weights: dict[str, torch.Tensor], layout: str) -> tuple[list[Node], dict[str, torch.Tensor]]:
    """Return the nodes of a VGG-style ``features`` stack (and its classifier, if present)."""
    convs = _feature_convs(weights)
    expected = VGG_CONV_COUNTS.get(layout)
    if expected is not None and len(convs) != expected:
        raise ConversionError(f"layout {layout} has {expected} convolutions, but the weights have {len(convs)} "
                              f"(features.{convs[0]} ... features.{convs[-1]}); check the card's layout")
    nodes: list[Node] = []
    out: dict[str, torch.Tensor] = {}
    previous, block, in_block = INPUT_NAME, 1, 0
    for position, index in enumerate(convs):
        in_block += 1
        conv = f"conv{block}_{in_block}"
        nodes.append(_conv_node(conv, f"features.{index}", weights, out, previous, 1, 1))
        relu = f"relu{block}_{in_block}"
        nodes.append(Node(relu, "relu", [conv], [relu]))
        previous = relu
        following = convs[position + 1] if position + 1 < len(convs) else None
        # A gap of 3 indices (conv, relu, pool) or the end of the stack closes a block with a max-pool.
        if following is None or following - index == 3:
            pool = f"pool{block}"
            nodes.append(Node(pool, "pool2d", [previous], [pool], {"mode": "max", "kernel": 2, "stride": 2}))
            previous, block, in_block = pool, block + 1, 0
        elif following - index != 2:
            raise ConversionError(f"features.{index} and features.{following} are {following - index} apart; a VGG "
                                  "stack has a ReLU (1 apart) or a ReLU and a pool (2 apart) between convolutions")
    nodes += _classifier(weights, out, previous)
    return nodes, out


def _classifier(weights: dict[str, torch.Tensor], out: dict[str, torch.Tensor], previous: str) -> list[Node]:
    present = {int(key.split(".")[1]) for key in weights if key.startswith("classifier.") and key.endswith(".weight")}
    if not present:
        return []
    if present & {1, 4} and not present & {0, 3}:
        raise ConversionError(
            "the classifier keys are classifier.1/.4 instead of classifier.0/.3 (an old pytorch-vgg conversion "
            "with Dropout first); add to the card [transforms] rename_keys = { \"classifier.1.\" = "
            "\"classifier.0.\", \"classifier.4.\" = \"classifier.3.\" }"
        )
    if present != set(CLASSIFIER_LINEAR):
        raise ConversionError(f"classifier Linear layers at {sorted(present)}; expected torchvision's {list(CLASSIFIER_LINEAR)}")
    nodes: list[Node] = []
    for number, index in zip((6, 7, 8), CLASSIFIER_LINEAR):
        fc = f"fc{number}"
        out[f"{fc}.weight"] = weights[f"classifier.{index}.weight"]
        if f"classifier.{index}.bias" in weights:
            out[f"{fc}.bias"] = weights[f"classifier.{index}.bias"]
        nodes.append(Node(fc, "linear", [previous], [fc], {"axis": 1}))
        previous = fc
        if number < 8:
            relu, drop = f"relu{number}", f"drop{number}"
            nodes.append(Node(relu, "relu", [fc], [relu]))
            nodes.append(Node(drop, "dropout", [relu], [drop]))
            previous = drop
    return nodes


def build_nin(weights: dict[str, torch.Tensor]) -> tuple[list[Node], dict[str, torch.Tensor]]:
    """Return the nodes of neural-style-pt's NIN ``features`` stack."""
    nodes: list[Node] = []
    out: dict[str, torch.Tensor] = {}
    previous = INPUT_NAME
    for index, name, kind, kernel, stride, padding in NIN_LAYERS:
        if kind == "conv":
            key = f"features.{index}.weight"
            if key not in weights:
                raise ConversionError(f"layout nspt_nin expects {key} ({name}), which the weights lack")
            if tuple(weights[key].shape[2:]) != (kernel, kernel):
                raise ConversionError(f"layout nspt_nin expects a {kernel}x{kernel} kernel at {key} ({name}), "
                                      f"got {tuple(weights[key].shape)}")
            nodes.append(_conv_node(name, f"features.{index}", weights, out, previous, stride, padding))
        elif kind == "relu":
            nodes.append(Node(name, "relu", [previous], [name]))
        elif kind == "dropout":
            nodes.append(Node(name, "dropout", [previous], [name]))
        else:
            mode = "max" if kind == "maxpool" else "avg"
            nodes.append(Node(name, "pool2d", [previous], [name],
                              {"mode": mode, "kernel": kernel, "stride": stride, "ceil_mode": True}))
        previous = name
    return nodes, out


# --- converters -------------------------------------------------------------------------------------


def convert_state_dict(weights: dict[str, torch.Tensor], options: Any, path: Path, fmt: str) -> tuple[GraphSpec, dict[str, torch.Tensor]]:
    """Build the graph of a neural-style-pt state dict after applying the card's key renames."""
    weights = rename_keys(weights, tuple(options.rename_keys))
    layout = options.layout or detect_layout(weights)
    if layout not in LAYOUTS:
        raise ConversionError(f"unknown layout '{layout}'; known layouts: {', '.join(LAYOUTS)}")
    if not options.layout:
        logger.info("%s: layout %s detected from the weight keys and shapes", path.name, layout)
    nodes, out = build_nin(weights) if layout == "nspt_nin" else build_vgg(weights, layout)
    shape = list(options.input_shape) if options.input_shape else [1, 3, 0, 0]
    spec = GraphSpec(nodes, {INPUT_NAME: shape}, [nodes[-1].name],
                     {"source_format": fmt, "source_file": path.name, "layout": layout,
                      "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    spec.validate()
    logger.info("converted %s: %d layers, layout %s", path.name, len(nodes), layout)
    return spec, {key: value.detach().float().contiguous() for key, value in out.items()}


def convert_pytorch(path: Path, options: Any) -> tuple[GraphSpec, dict[str, torch.Tensor]]:
    """Convert a ``.pth``/``.pt`` state dict (read with ``weights_only=True``)."""
    return convert_state_dict(load_checkpoint(Path(path)), options, Path(path), "pytorch")


def convert_safetensors(path: Path, options: Any) -> tuple[GraphSpec, dict[str, torch.Tensor]]:
    """Convert a ``.safetensors`` state dict."""
    return convert_state_dict(load_safetensors(Path(path)), options, Path(path), "safetensors")
