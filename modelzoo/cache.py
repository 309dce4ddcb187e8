"""The model cache: its layout, the per-model lock and hash record, and the ``cache`` operations.

Layout under ``config.cache_dir()``::

    <model>/files/<file name>     source files as published
    <model>/converted/            written by the converter step
    <model>/hashes.json           sha256 and size of each file, recorded when it was downloaded
    <model>/.lock                 the file lock that serialises fetches of one model
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import filelock

from modelzoo import config
from modelzoo.download import file_hashes
from modelzoo.errors import CacheError, NotCachedError
from registry import ModelCard, Registry

logger = logging.getLogger(__name__)

HASHES_FILE = "hashes.json"
LOCK_FILE = ".lock"
FILES_DIR = "files"
CONVERTED_DIR = "converted"
# Temporary names: ``*.part`` from the downloader, ``.tmp*`` folders from pip and the converter.
TEMPORARY_PATTERNS = ("*.part", ".tmp*", "*.tmp")


def model_dir(name: str) -> Path:
    """Return the cache folder of model ``name``."""
    return config.cache_dir() / name


def files_dir(name: str) -> Path:
    """Return the folder of model ``name``'s source files."""
    return model_dir(name) / FILES_DIR


def file_path(name: str, file_name: str) -> Path:
    """Return the cache path of one source file of model ``name``."""
    return files_dir(name) / file_name


def converted_dir(name: str) -> Path:
    """Return the folder the converter writes for model ``name``."""
    return model_dir(name) / CONVERTED_DIR


def lock(name: str) -> filelock.FileLock:
    """Return the file lock of model ``name``; hold it while its files are written."""
    folder = model_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(str(folder / LOCK_FILE))


# --- the hash record ---------------------------------------------------------------------------------


def read_hashes(name: str) -> dict[str, dict]:
    """Return the recorded facts of model ``name``'s files by file name: sha256, size, url, tofu."""
    path = model_dir(name) / HASHES_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("ignoring the unreadable hash record %s: %s", path, error)
        return {}
    files = data.get("files", {}) if isinstance(data, dict) else {}
    return {key: value for key, value in files.items() if isinstance(value, dict)}


def record_hash(name: str, file_name: str, sha256: str, size: int, url: str, tofu: bool) -> None:
    """Record the sha256 and size of a downloaded file; ``tofu`` marks a hash trusted on first use."""
    files = read_hashes(name)
    files[file_name] = {"sha256": sha256, "size": size, "url": url, "tofu": tofu, "recorded": int(time.time())}
    path = model_dir(name) / HASHES_FILE
    temporary = path.with_name(f"{HASHES_FILE}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"files": files}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def forget_hash(name: str, file_name: str) -> None:
    """Remove one file from the hash record of model ``name``."""
    files = read_hashes(name)
    if files.pop(file_name, None) is not None:
        path = model_dir(name) / HASHES_FILE
        path.write_text(json.dumps({"files": files}, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --- listing -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedFile:
    """One source file in the cache."""

    name: str
    path: Path
    size: int


@dataclass(frozen=True)
class CachedModel:
    """One model folder in the cache; ``known`` is False when no card has its name."""

    name: str
    files: tuple[CachedFile, ...]
    converted: bool
    known: bool
    size: int


def folder_size(path: Path) -> int:
    """Return the bytes of all files under ``path``."""
    if path.is_file():
        return path.stat().st_size
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def is_cached(card: ModelCard) -> bool:
    """Return True when every file of ``card`` is in the cache."""
    return all(file_path(card.name, spec.name).is_file() for spec in card.files)


def is_converted(name: str) -> bool:
    """Return True when the converter has written model ``name``'s folder."""
    folder = converted_dir(name)
    return folder.is_dir() and any(folder.iterdir())


def _is_temporary(path: Path) -> bool:
    return any(path.match(pattern) for pattern in TEMPORARY_PATTERNS)


def list_models(registry: Registry) -> list[CachedModel]:
    """Return every model folder in the cache, sorted by name."""
    root = config.cache_dir()
    if not root.is_dir():
        return []
    models = []
    for folder in sorted(entry for entry in root.iterdir() if entry.is_dir()):
        source_folder = folder / FILES_DIR
        files = tuple(
            CachedFile(path.name, path, path.stat().st_size)
            for path in sorted(source_folder.iterdir() if source_folder.is_dir() else [])
            if path.is_file() and not _is_temporary(path)
        )
        converted = is_converted(folder.name)
        if not files and not converted:
            continue  # only a lock file from a fetch that failed; 'nstzoo cache prune' removes the folder
        models.append(CachedModel(folder.name, files, converted, folder.name in registry, folder_size(folder)))
    return models


# --- verify ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """The result of re-hashing one cached file.

    ``status`` is ``ok``, ``mismatch``, ``missing`` (the card lists the file but the cache lacks it) or
    ``unchecked`` (no hash is known). ``reference`` names where the expected hash comes from.
    """

    model: str
    file_name: str
    status: str
    algorithm: str = ""
    expected: str = ""
    actual: str = ""
    reference: str = ""


def _expected_hash(card: ModelCard | None, file_name: str, recorded: dict[str, dict]) -> tuple[str, str, str]:
    """Return (algorithm, hash, where it comes from) for a cached file, or empty strings."""
    spec = next((spec for spec in card.files if spec.name == file_name), None) if card else None
    if spec is not None and spec.sha256:
        return "sha256", spec.sha256, "card"
    entry = recorded.get(file_name, {})
    if entry.get("sha256"):
        return "sha256", entry["sha256"], "recorded on first download"
    if spec is not None and spec.md5:
        return "md5", spec.md5, "card"
    return "", "", ""


def verify_model(name: str, card: ModelCard | None) -> list[Verification]:
    """Re-hash every cached source file of model ``name``."""
    recorded = read_hashes(name)
    results = []
    names = {path.name for path in files_dir(name).glob("*") if path.is_file() and not _is_temporary(path)}
    if card is not None:
        for spec in card.files:
            if spec.name not in names and spec.sources:
                results.append(Verification(name, spec.name, "missing"))
    for file_name in sorted(names):
        algorithm, expected, reference = _expected_hash(card, file_name, recorded)
        if not algorithm:
            results.append(Verification(name, file_name, "unchecked"))
            continue
        sha256, md5 = file_hashes(file_path(name, file_name), with_md5=algorithm == "md5")
        actual = sha256 if algorithm == "sha256" else md5
        status = "ok" if actual == expected else "mismatch"
        results.append(Verification(name, file_name, status, algorithm, expected, actual, reference))
    return results


def verify(registry: Registry, names: Iterable[str] = ()) -> list[Verification]:
    """Re-hash every cached file of the models ``names`` (all cached models when empty)."""
    selected = list(names) or [model.name for model in list_models(registry)]
    results = []
    for name in selected:
        if not model_dir(name).is_dir():
            raise NotCachedError(f"model '{name}' is not in the cache {config.cache_dir()}", hint=f"nstzoo fetch {name}")
        card = registry.cards.get(name)
        results.extend(verify_model(name, card))
    return results


# --- rm and prune ------------------------------------------------------------------------------------


def _remove(path: Path) -> int:
    size = folder_size(path)
    try:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as error:
        raise CacheError(f"could not remove {path}: {error}", hint="check its permissions, then run the command again") from error
    return size


def remove_model(name: str) -> int:
    """Delete model ``name`` from the cache under its lock and return the bytes freed."""
    folder = model_dir(name)
    if not folder.is_dir():
        raise NotCachedError(f"model '{name}' is not in the cache {config.cache_dir()}", hint="nstzoo cache ls")
    with lock(name):
        freed = sum(_remove(entry) for entry in folder.iterdir() if entry.name != LOCK_FILE)
    _remove(folder)
    logger.info("removed %s (%d bytes)", folder, freed)
    return freed


def prune(registry: Registry) -> list[tuple[Path, int]]:
    """Delete temporary files of finished or dead fetches and the folders of models that no card describes.

    Returns the removed paths with their sizes. A model whose lock another process holds is skipped, so
    prune never deletes the temporary file of a running download.
    """
    root = config.cache_dir()
    removed: list[tuple[Path, int]] = []
    if not root.is_dir():
        return removed
    for folder in sorted(entry for entry in root.iterdir() if entry.is_dir()):
        try:
            with filelock.FileLock(str(folder / LOCK_FILE), timeout=0):
                if folder.name not in registry:
                    targets = [entry for entry in folder.iterdir() if entry.name != LOCK_FILE]
                else:
                    targets = [path for pattern in TEMPORARY_PATTERNS for path in folder.rglob(pattern)]
                for target in targets:
                    if target.exists():
                        removed.append((target, _remove(target)))
        except filelock.Timeout:
            logger.info("skipping %s: another process has locked it", folder)
            continue
        if folder.name not in registry:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append((folder, 0))
    return removed
