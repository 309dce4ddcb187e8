"""The model registry: typed model cards, one TOML file per model, and their loader.

This package imports nothing from ``converters`` or ``modelzoo``.
"""

from registry.errors import CardError, RegistryError, UnknownModelError
from registry.loader import Registry, builtin_card_paths, load_card
from registry.schema import (
    Defaults,
    FileSpec,
    InputContract,
    ModelCard,
    Source,
    Transforms,
    Upscale,
    card_from_dict,
    parse_source,
)

__all__ = [
    "CardError",
    "Defaults",
    "FileSpec",
    "InputContract",
    "ModelCard",
    "Registry",
    "RegistryError",
    "Source",
    "Transforms",
    "UnknownModelError",
    "Upscale",
    "builtin_card_paths",
    "card_from_dict",
    "load_card",
    "parse_source",
]
