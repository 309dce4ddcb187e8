"""Fixtures for download tests: the loopback server, an empty nstzoo home, and test cards written into it.

Import the fixtures into a test module to use them: ``from fixtures_http import http_server, nstzoo_home``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest
import tomli_w

from httpserver import LoopbackServer

NSTZOO_VARIABLES = ("NSTZOO_HOME", "NSTZOO_OFFLINE", "NSTZOO_MIRROR", "NSTZOO_DEBUG", "HF_HUB_OFFLINE", "HF_ENDPOINT")


@pytest.fixture
def http_server():
    server = LoopbackServer()
    yield server
    server.close()


@pytest.fixture
def nstzoo_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty NSTZOO_HOME with every nstzoo variable unset; proxies are bypassed for 127.0.0.1."""
    for name in NSTZOO_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "nstzoo-home"
    home.mkdir()
    monkeypatch.setenv("NSTZOO_HOME", str(home))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    # The CLI's main() stops nstzoo's loggers from propagating; caplog listens on the root logger.
    for name in ("modelzoo", "registry", "converters"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    return home


def payload(size: int, seed: int = 0) -> bytes:
    """Return ``size`` deterministic pseudo-random bytes (no run of repeated data to compress)."""
    blocks = []
    counter = 0
    while sum(len(block) for block in blocks) < size:
        blocks.append(hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64)
        counter += 1
    return b"".join(blocks)[:size]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_card(home: Path, name: str, files: list[dict], **fields) -> Path:
    """Write a minimal valid features card called ``name`` into ``home``/registry and return its path.

    Each entry of ``files`` is a ``[[files]]`` table (name, role, sources, size, sha256, md5).
    """
    card = {
        "name": name,
        "title": f"test model {name}",
        "family": "test",
        "task": "features",
        "format": "pytorch",
        "licence": "test data",
        "files": files,
        "input": {"channel_order": "RGB", "value_range": 1.0, "mean": [0.0, 0.0, 0.0]},
        "layers": {"names": ["conv1"]},
        "defaults": {"content_layers": ["conv1"], "style_layers": ["conv1"]},
        **fields,
    }
    folder = home / "registry"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_bytes(tomli_w.dumps(card).encode())
    return path


def subprocess_env(home: Path, **extra: str) -> dict[str, str]:
    """Return an environment for an nstzoo subprocess that uses ``home``."""
    env = {key: value for key, value in os.environ.items() if key not in NSTZOO_VARIABLES}
    env.update({"NSTZOO_HOME": str(home), "NO_PROXY": "127.0.0.1,localhost", **extra})
    return env
