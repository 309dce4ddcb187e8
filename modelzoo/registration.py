"""``register``: add the user's own model file to the zoo as a user card, converted and cached.

The steps run in an order that leaves nothing half-done: the source (a path, an http(s) URL or an
``hf://OWNER/REPO/PATH[@REVISION]`` file) is copied or downloaded into a staging folder in the cache, its
format is detected from its content, it is converted there, and only then are the files moved into the
model's cache folder and the card written, last. Any error removes the staging folder and writes no card.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomli_w

from converters.formats import ConvertOptions, convert, detect_format
from converters.graph import GRAPH_FILE, GraphSpec, save_converted
from modelzoo import cache, config
from modelzoo.errors import NstzooError
from registry import ModelCard, Registry
from registry.loader import load_card
from registry.schema import Transforms, card_from_dict

logger = logging.getLogger(__name__)

# Input contract assumed per format when neither --like nor the contract options give one. Caffe and
# Torch7 models of the neural-style era (and neural-style-pt's .pth conversions of them) take BGR 0-255
# images minus the VGG mean pixel; ONNX exports mostly take RGB in [0, 1].
VGG_MEAN_BGR = (103.939, 116.779, 123.68)
ASSUMED_CONTRACTS = {
    "caffe": ("BGR", 255.0, VGG_MEAN_BGR),
    "torch7": ("BGR", 255.0, VGG_MEAN_BGR),
    "pytorch": ("BGR", 255.0, VGG_MEAN_BGR),
    "safetensors": ("BGR", 255.0, VGG_MEAN_BGR),
    "onnx": ("RGB", 1.0, (0.0, 0.0, 0.0)),
}
# Default layers by the names a converted graph has: Gatys et al.'s VGG layers, and the NIN layers of
# neural-style's README.
KNOWN_DEFAULTS = (
    (("relu4_2",), ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")),
    (("relu7",), ("relu0", "relu3", "relu7", "relu12")),
)
ACTIVATION_OPS = {"relu", "t7_threshold", "t7_activation"}


class RegisterError(NstzooError, ValueError):
    """A model could not be registered; nothing was written."""


@dataclass
class Registered:
    """The outcome of ``register``: the card, its file, the converted folder, and the layers a user can name."""

    card: ModelCard
    card_path: Path
    converted: Path
    layers: list[str]
    format: str
    format_reason: str
    notes: list[str] = field(default_factory=list)


# --- sources ----------------------------------------------------------------------------------------


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def _hf_location(text: str) -> tuple[str, str]:
    body = text[len("hf://"):]
    location, _, revision = body.partition("@")
    if location.count("/") < 2:
        raise RegisterError(f"invalid Hugging Face source {text!r}", hint="write hf://OWNER/REPO/PATH/IN/REPO[@REVISION]")
    return location, revision or "main"


def source_file_name(source: str) -> str:
    """Return the file name a source will have in the cache."""
    if source.startswith("hf://"):
        return _hf_location(source)[0].rsplit("/", 1)[-1]
    if _is_url(source):
        name = source.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        return name or "weights"
    return Path(source).name


def card_source(source: str) -> str | None:
    """Return the source as a card writes it (URLs and hf:// files), or None for a local path."""
    if source.startswith("hf://"):
        location, revision = _hf_location(source)
        return f"hf://{location}@{revision}"
    return source if _is_url(source) else None


def stage_source(source: str, destination: Path, model: str) -> Path:
    """Copy or download ``source`` to ``destination`` and return it."""
    from modelzoo.download import download

    destination.parent.mkdir(parents=True, exist_ok=True)
    if source.startswith("hf://"):
        from modelzoo.sources import _hf_headers, hf_url
        from registry.schema import Source

        if config.hf_offline():
            raise RegisterError(f"{source} needs the network, but NSTZOO_OFFLINE or HF_HUB_OFFLINE is set")
        location, revision = _hf_location(source)
        download(hf_url(Source("hf", location, revision=revision)), destination, model=model,
                 headers=dict(_hf_headers()))
        return destination
    if _is_url(source):
        if config.offline():
            raise RegisterError(f"{source} needs the network, but NSTZOO_OFFLINE is set",
                                hint="download the file yourself and register its path")
        download(source, destination, model=model)
        return destination
    path = Path(source).expanduser()
    if not path.is_file():
        raise RegisterError(f"source {source!r} is not a file, an http(s) URL or an hf:// file",
                            hint="give the path of the weights file, or its URL")
    shutil.copyfile(path, destination)
    return destination


# --- the card ---------------------------------------------------------------------------------------


def default_name(source: str) -> str:
    """Return a card name made from the source's file name (the name only labels the card)."""
    stem = source_file_name(source).split(".", 1)[0].lower()
    name = re.sub(r"[^a-z0-9_.-]+", "_", stem).strip("_.-")
    return name or "model"


def card_to_dict(card: ModelCard) -> dict[str, Any]:
    """Return the TOML table of ``card`` (the inverse of ``registry.schema.card_from_dict``)."""
    data: dict[str, Any] = {
        "name": card.name, "title": card.title, "family": card.family, "task": card.task,
        "format": card.format, "licence": card.licence,
    }
    for key in ("paper", "description", "layout", "install_hint"):
        if getattr(card, key):
            data[key] = getattr(card, key)
    if card.caveats:
        data["caveats"] = list(card.caveats)
    if card.input_shape:
        data["input_shape"] = list(card.input_shape)
    data["files"] = []
    for spec in card.files:
        entry: dict[str, Any] = {"name": spec.name, "role": spec.role, "sources": [source.text for source in spec.sources]}
        if spec.size is not None:
            entry["size"] = spec.size
        for key in ("sha256", "md5", "hash_note"):
            if getattr(spec, key):
                entry[key] = getattr(spec, key)
        data["files"].append(entry)
    contract = card.input
    data["input"] = {"channel_order": contract.channel_order, "value_range": contract.value_range,
                     "mean": list(contract.mean), "std": list(contract.std)}
    if contract.size is not None:
        data["input"]["size"] = contract.size
    if contract.mean_note:
        data["input"]["mean_note"] = contract.mean_note
    data["layers"] = {"names": list(card.layers)}
    if card.layer_nodes:
        data["layers"]["nodes"] = dict(card.layer_nodes)
    defaults = card.defaults
    data["defaults"] = {
        "content_layers": list(defaults.content_layers), "style_layers": list(defaults.style_layers),
        "content_weight": defaults.content_weight, "style_weight": defaults.style_weight,
        "tv_weight": defaults.tv_weight,
    }
    if defaults.style_layer_weights:
        data["defaults"]["style_layer_weights"] = list(defaults.style_layer_weights)
    if defaults.note:
        data["defaults"]["note"] = defaults.note
    transforms = card.transforms
    data["transforms"] = {"strip_dropout": transforms.strip_dropout, "drop_classifier": transforms.drop_classifier,
                          "truncate": transforms.truncate, "pooling": transforms.pooling}
    if transforms.rename_keys:
        data["transforms"]["rename_keys"] = dict(transforms.rename_keys)
    if card.upscale is not None:
        data["upscale"] = {"scale": card.upscale.scale, "architecture": card.upscale.architecture}
    return data


def pick_default_layers(spec: GraphSpec) -> tuple[list[str], list[str]]:
    """Return (content, style) layers: the classic ones where the names exist, else spread activations.

    Without known names, style takes up to five activation layers spread over the network's depth and
    content the one about 60% deep, which is where relu4_2 sits in VGG-19's ReLUs.
    """
    names = set(spec.node_names)
    for content, style in KNOWN_DEFAULTS:
        if names.issuperset(content) and names.issuperset(style):
            return list(content), list(style)
    candidates = [node.name for node in spec.nodes if node.op in ACTIVATION_OPS or node.attrs.get("op_type") in ("Relu", "Clip", "LeakyRelu")]
    if not candidates:
        candidates = [node.name for node in spec.nodes if node.op in ("conv2d",) or node.attrs.get("op_type") == "Conv"]
    if not candidates:
        candidates = spec.node_names
    count = min(5, len(candidates))
    style = [candidates[round(index * (len(candidates) - 1) / max(count - 1, 1))] for index in range(count)]
    content = [candidates[min(len(candidates) - 1, int(len(candidates) * 0.6))]]
    return content, list(dict.fromkeys(style))


@dataclass
class ContractOptions:
    """The input contract options of ``nstzoo register``; None keeps the default."""

    mean: tuple[float, float, float] | None = None
    channel_order: str | None = None
    value_range: float | None = None
    std: tuple[float, float, float] | None = None


def _build_card_data(name: str, fmt: str, like: ModelCard | None, files: list[dict[str, Any]], spec: GraphSpec,
                     contract: ContractOptions, layout: str, transforms: Transforms,
                     content_layers: list[str] | None, style_layers: list[str] | None,
                     notes: list[str]) -> dict[str, Any]:
    if like is not None:
        data = card_to_dict(like)
        data.update(name=name, format=fmt, files=files)
        data["description"] = f"registered by the user from their own copy, with the layers and defaults of {like.name}"
        data.pop("install_hint", None)
    else:
        order, value_range, mean = ASSUMED_CONTRACTS[fmt]
        if contract.mean is None and contract.channel_order is None and contract.value_range is None:
            notes.append(f"input contract assumed for {fmt}: {order}, range 0-{value_range:g}, mean {list(mean)}; "
                         "set --mean, --bgr/--rgb and --scale if the model expects otherwise")
        content, style = pick_default_layers(spec)
        data = {
            "name": name, "title": f"{name} (registered by the user)", "family": "user", "task": "features",
            "format": fmt, "licence": "unknown (registered by the user)", "files": files,
            "input": {"channel_order": order, "value_range": value_range, "mean": list(mean)},
            "layers": {"names": spec.node_names},
            "defaults": {"content_layers": content, "style_layers": style},
        }
    if contract.channel_order:
        data["input"]["channel_order"] = contract.channel_order
    if contract.value_range:
        data["input"]["value_range"] = contract.value_range
    if contract.mean is not None:
        data["input"]["mean"] = list(contract.mean)
    if contract.std is not None:
        data["input"]["std"] = list(contract.std)
    if layout:
        data["layout"] = layout
    # The same transforms as the conversion, so a later fetch finds the converted folder current.
    data["transforms"] = {"strip_dropout": transforms.strip_dropout, "drop_classifier": transforms.drop_classifier,
                          "truncate": transforms.truncate, "pooling": transforms.pooling}
    if transforms.rename_keys:
        data["transforms"]["rename_keys"] = dict(transforms.rename_keys)
    layers = data["layers"]["names"]
    for key, chosen in (("content_layers", content_layers), ("style_layers", style_layers)):
        if chosen:
            unknown = [layer for layer in chosen if layer not in layers]
            if unknown:
                raise RegisterError(f"{key.replace('_', ' ')} {unknown} are not layers of the model; "
                                    f"valid layers: {', '.join(layers)}")
            data["defaults"][key] = list(chosen)
    return data


def _check_like_layers(like: ModelCard, spec: GraphSpec) -> None:
    """Raise unless every layer of the built-in card exists in the converted graph."""
    nodes = set(spec.node_names)
    missing = [layer for layer in like.layers if like.node_for_layer(layer) not in nodes]
    if missing:
        raise RegisterError(
            f"the file does not have the layers of card '{like.name}': {', '.join(missing)} are missing; "
            f"its layers are: {', '.join(spec.node_names)}",
            hint=f"check that the file is a copy of {like.name}, or register it without --like",
        )


# --- register and unregister ------------------------------------------------------------------------


def _user_card_path(name: str) -> Path:
    return config.user_registry_dir() / f"{name}.toml"


def _write_card(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(tomli_w.dumps(data).encode("utf-8"))
    os.replace(temporary, path)


def _convert_staged(card: ModelCard, files: dict[str, Path], staging: Path) -> Path:
    """Convert into ``staging/converted`` with the cache's converter step, or directly if it is missing."""
    try:
        from modelzoo.convert import ensure_converted
    except ModuleNotFoundError as error:
        if error.name != "modelzoo.convert":
            raise
        options = ConvertOptions(prototxt=files.get("prototxt"), input_shape=card.input_shape or None,
                                 layout=card.layout, rename_keys=card.transforms.rename_keys)
        spec, weights = convert(card.format, files["weights"], options)
        return save_converted(staging / cache.CONVERTED_DIR, spec, weights)
    folder = ensure_converted(card, files, staging)
    if folder is None:
        raise RegisterError(f"model '{card.name}' was not converted")
    return Path(folder)


def _install(name: str, staging: Path) -> Path:
    """Move the staged files and converted folder into the model's cache folder; return that folder."""
    target = cache.model_dir(name)
    with cache.lock(name):
        for entry_name in (cache.FILES_DIR, cache.CONVERTED_DIR):
            staged = staging / entry_name
            if not staged.exists():
                continue
            final = target / entry_name
            if final.exists():
                old = target / f".{entry_name}.old.{os.getpid()}"
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(staged, final)
    return target


def register(
    source: str,
    *,
    name: str | None = None,
    fmt: str | None = None,
    prototxt: str | None = None,
    like: str | None = None,
    contract: ContractOptions | None = None,
    layout: str = "",
    rename_keys: tuple[tuple[str, str], ...] = (),
    content_layers: list[str] | None = None,
    style_layers: list[str] | None = None,
    input_shape: tuple[int, ...] | None = None,
    force: bool = False,
) -> Registered:
    """Register the model file at ``source`` as a user card, converted and cached, and return what was written.

    ``like`` names a built-in card whose layers, defaults and input contract the file takes; the user card
    then has that card's name (and loads over it) unless ``name`` is given. The architecture always comes
    from the card, the prototxt or the weights, never from the file name.
    """
    like_card = None
    if like:
        # A user card registered earlier --like the same name overrides the built-in one; take the built-in.
        builtin = Registry.load(None)
        like_card = builtin.get(like) if like in builtin else Registry.load(config.user_registry_dir()).get(like)
    name = name or (like_card.name if like_card is not None else default_name(source))
    card_path = _user_card_path(name)
    if card_path.exists() and not force:
        raise RegisterError(f"a user card named '{name}' already exists ({card_path})",
                            hint=f"run 'nstzoo unregister {name}' first, pass --force, or choose another --name")

    staging = config.cache_dir() / f".register-{name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        weights_path = stage_source(source, staging / cache.FILES_DIR / source_file_name(source), name)
        prototxt_path = None
        if prototxt:
            prototxt_path = stage_source(prototxt, staging / cache.FILES_DIR / source_file_name(prototxt), name)
        if fmt:
            reason = "given with --format"
        else:
            fmt, reason = detect_format(weights_path, prototxt_path)
        if fmt == "caffe" and prototxt_path is None:
            raise RegisterError(f"{source} is a Caffe model ({reason})", hint="pass its deploy prototxt with --prototxt")
        logger.info("%s: format %s (%s)", source_file_name(source), fmt, reason)

        files_table = [_file_entry(weights_path, "weights", source)]
        files = {"weights": weights_path}
        if prototxt_path is not None:
            files_table.append(_file_entry(prototxt_path, "prototxt", prototxt or ""))
            files["prototxt"] = prototxt_path
        layout = layout or (like_card.layout if like_card else "")
        renames = tuple(rename_keys) or (like_card.transforms.rename_keys if like_card else ())
        transforms = _transforms(like_card, renames)
        conversion_card = ModelCard(name=name, title=name, family="user", task="features", format=fmt, files=(),
                                    licence="", layout=layout, input_shape=tuple(input_shape or ()),
                                    transforms=transforms, builtin=False)
        converted = _convert_staged(conversion_card, files, staging)
        spec = GraphSpec.from_json(_read_json(converted / GRAPH_FILE))
        if like_card is not None:
            _check_like_layers(like_card, spec)

        notes: list[str] = []
        data = _build_card_data(name, fmt, like_card, files_table, spec, contract or ContractOptions(), layout,
                                transforms, content_layers, style_layers, notes)
        if input_shape:
            data["input_shape"] = list(input_shape)
        card_from_dict(data, str(card_path), builtin=False)  # validate before anything moves

        model_folder = _install(name, staging)
        for entry, origin in zip(files_table, (source, prototxt or "")):
            cache.record_hash(name, entry["name"], entry["sha256"], entry["size"], origin, tofu=False)
        _write_card(card_path, data)  # last, so a failure above leaves no card behind
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    card = load_card(card_path)
    logger.info("registered %s (%s) as %s", source, fmt, card_path)
    layers = list(card.layers) if like_card is not None else spec.node_names
    return Registered(card, card_path, model_folder / cache.CONVERTED_DIR, layers, fmt, reason, notes)


def _transforms(like_card: ModelCard | None, renames: tuple[tuple[str, str], ...]) -> Transforms:
    """Return the card's transforms: the --like card's, or strip dropout only, with the key renames."""
    if like_card is not None:
        return replace(like_card.transforms, rename_keys=renames)
    return Transforms(strip_dropout=True, drop_classifier=False, truncate=True, pooling="max", rename_keys=renames)


def _read_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def _file_entry(path: Path, role: str, source: str) -> dict[str, Any]:
    from modelzoo.download import file_hashes

    sha256, _ = file_hashes(path)
    entry: dict[str, Any] = {"name": path.name, "role": role, "size": path.stat().st_size, "sha256": sha256}
    remote = card_source(source)
    entry["sources"] = [remote] if remote else []
    return entry


def unregister(name: str) -> list[Path]:
    """Remove the user card ``name`` and its cache folder; return the removed paths."""
    card_path = _user_card_path(name)
    if not card_path.exists():
        user_cards = sorted(path.stem for path in config.user_registry_dir().glob("*.toml"))
        listed = ", ".join(user_cards) or "none"
        raise RegisterError(f"no user card named '{name}' (user cards: {listed}); built-in cards cannot be unregistered")
    removed = [card_path]
    card_path.unlink()
    folder = cache.model_dir(name)
    if folder.is_dir():
        cache.remove_model(name)
        removed.append(folder)
    logger.info("unregistered %s", name)
    return removed
