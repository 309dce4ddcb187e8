"""Settings read from the environment at call time, never at import."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "nstzoo"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def home() -> Path:
    """Return the nstzoo home: ``NSTZOO_HOME`` if set, else the platform's user cache folder."""
    override = os.environ.get("NSTZOO_HOME", "").strip()
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir(APP_NAME))


def cache_dir() -> Path:
    """Return the folder of downloaded and converted models."""
    return home() / "models"


def user_registry_dir() -> Path:
    """Return the folder of user cards, which load over the built-in ones by name."""
    return home() / "registry"


def offline() -> bool:
    """Return True when ``NSTZOO_OFFLINE`` is set: no network access at all."""
    return _flag("NSTZOO_OFFLINE")


def hf_offline() -> bool:
    """Return True when hf:// sources must not touch the network (``NSTZOO_OFFLINE`` or ``HF_HUB_OFFLINE``)."""
    return offline() or _flag("HF_HUB_OFFLINE")


def mirror() -> str:
    """Return ``NSTZOO_MIRROR`` without a trailing slash, or an empty string."""
    return os.environ.get("NSTZOO_MIRROR", "").strip().rstrip("/")


def debug() -> bool:
    """Return True when ``NSTZOO_DEBUG`` requests tracebacks."""
    return _flag("NSTZOO_DEBUG")
