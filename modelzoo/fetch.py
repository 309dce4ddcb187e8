"""``fetch``: put a model's files in the cache, verified, and convert them once.

The outcome is one word, as in a cache's vocabulary: ``download`` (nothing was cached), ``fetch`` (every
file was cached and current) or ``update`` (a cached file was replaced because the card changed, it was
damaged, or ``force`` was given). The converter step redoes its work only when the source files change.
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import filelock

from modelzoo import cache, config, sources
from modelzoo.download import Downloaded, file_hashes
from modelzoo.errors import AllSourcesFailedError, HashMismatchError, NoSourceError, NstzooError, OfflineError
from registry import FileSpec, ModelCard, Registry

logger = logging.getLogger(__name__)

# Called with (file name, bytes written so far, total bytes or None) while a file downloads.
FetchProgress = Callable[[str, int, "int | None"], None]


@dataclass(frozen=True)
class FetchResult:
    """The outcome of ``fetch``: its action word and the paths of the files.

    ``files`` maps each file's role (``weights``, ``prototxt``, ``other``) to its path; a second file with
    the same role is keyed by its file name. ``converted`` is the converter's folder, or None when the
    model was not converted.
    """

    model: str
    files: dict[str, Path]
    converted: Path | None
    action: str


def load_registry() -> Registry:
    """Load the built-in cards and the user's cards over them."""
    return Registry.load(config.user_registry_dir())


def _cached_state(card: ModelCard, spec: FileSpec, path: Path) -> str:
    """Return ``absent``, ``stale`` or ``current`` for the cached copy of ``spec``."""
    if not path.is_file():
        return "absent"
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        logger.warning("cached %s is %d bytes but the card expects %d; downloading it again", path, size, spec.size)
        return "stale"
    recorded = cache.read_hashes(card.name).get(spec.name, {})
    if recorded.get("sha256") and recorded.get("size") == size:
        if spec.sha256 and recorded["sha256"] != spec.sha256:
            logger.warning("the card's sha256 of %s changed since it was downloaded; downloading it again", spec.name)
            return "stale"
        return "current"

    # No usable record (first run after an upgrade, or a file the user copied in): hash it once.
    sha256, md5 = file_hashes(path, with_md5=bool(spec.md5))
    if (spec.sha256 and sha256 != spec.sha256) or (spec.md5 and md5 != spec.md5):
        logger.warning("cached %s does not match the card's hash; downloading it again", path)
        return "stale"
    _record(card, spec, sha256, size, url=str(path))
    return "current"


def _record(card: ModelCard, spec: FileSpec, sha256: str, size: int, url: str) -> None:
    tofu = not spec.sha256
    cache.record_hash(card.name, spec.name, sha256, size, url, tofu)
    if spec.sha256:
        return
    if spec.md5:
        logger.info("%s of %s matches the card's md5; recorded its sha256 %s", spec.name, card.name, sha256)
        return
    logger.warning(
        "the card of %s has no hash for %s, so its sha256 %s was computed from this copy and recorded (trust on "
        "first use); later fetches and 'nstzoo cache verify' check against it. Add sha256 = \"%s\" to the card "
        "to pin it",
        card.name, spec.name, sha256, sha256,
    )


def _download_file(card: ModelCard, spec: FileSpec, path: Path, progress: FetchProgress | None) -> Downloaded:
    """Try the mirror and each source in order; raise ``AllSourcesFailedError`` with one line per failure."""
    if not spec.sources and not config.mirror():
        raise NoSourceError(card.name, spec.name, hint=card.install_hint or f"put the file at {path}")
    candidates, failures = sources.candidates(card, spec)
    callback = functools.partial(progress, spec.name) if progress is not None else None
    hash_error: HashMismatchError | None = None
    for index, candidate in enumerate(candidates, start=1):
        try:
            return sources.fetch_candidate(candidate, card, spec, path, callback)
        except NstzooError as error:
            if isinstance(error, HashMismatchError):
                hash_error = error
            # Download errors name their URL already; prefix the source only where the message lacks it.
            line = str(error) if (candidate.url or candidate.label) in str(error) else f"{candidate.label}: {error}"
            if candidate.label.startswith("mirror ") and not line.startswith("mirror"):
                line = f"mirror: {line}"
            failures.append(line)
            more = "; trying the next source" if index < len(candidates) else ""
            logger.warning("source %d of %d failed: %s%s", index, len(candidates), line, more)

    hint = hash_error.hint if hash_error is not None else (
        f"check the network (or set NSTZOO_MIRROR to a mirror you can reach), or put the file at {path} and run "
        f"'nstzoo fetch {card.name}' again"
    )
    if not spec.sources and card.install_hint:
        hint = card.install_hint
    raise AllSourcesFailedError(card.name, spec.name, failures, hint=hint)


def _role_key(spec: FileSpec, files: dict[str, Path]) -> str:
    return spec.role if spec.role not in files else spec.name


def _acquire(name: str) -> filelock.FileLock:
    model_lock = cache.lock(name)
    try:
        model_lock.acquire(timeout=0)
    except filelock.Timeout:
        logger.info("waiting for another process that is fetching %s (lock %s)", name, model_lock.lock_file)
        model_lock.acquire()
    return model_lock


def _convert(card: ModelCard, files: dict[str, Path]) -> Path | None:
    try:
        from modelzoo.convert import ensure_converted
    except ModuleNotFoundError as error:
        if error.name != "modelzoo.convert":
            raise
        logger.warning("modelzoo.convert is not installed, so %s was not converted", card.name)
        return None
    return ensure_converted(card, files, cache.model_dir(card.name))


def _offline_error(card: ModelCard, spec: FileSpec, path: Path) -> OfflineError:
    return OfflineError(
        f"model '{card.name}' needs {spec.name}, which is not cached, and NSTZOO_OFFLINE is set",
        hint=f"unset NSTZOO_OFFLINE and run 'nstzoo fetch {card.name}', or copy the file to {path}",
    )


def fetch(
    name: str,
    force: bool = False,
    progress: FetchProgress | None = None,
    *,
    convert: bool = True,
    registry: Registry | None = None,
) -> FetchResult:
    """Download, verify and convert model ``name`` unless the cache already contains it.

    A cached file counts as current when its size and the sha256 recorded at download match the card, so
    a fetch does not re-hash it (``nstzoo cache verify`` does). Offline (``NSTZOO_OFFLINE=1``) a cached
    model is returned without any network access. A file lock per
    model makes concurrent fetches of one model download it once; the others wait and then find it cached.

    Raises:
        UnknownModelError: no card is called ``name``.
        NoSourceError: a file has no source; the message carries the card's install hint.
        OfflineError: a file is missing and offline mode is on.
        AllSourcesFailedError: every source of a file failed; one line per source.
    """
    card = (registry or load_registry()).get(name)
    model_lock = _acquire(name)
    try:
        actions = []
        files: dict[str, Path] = {}
        for spec in card.files:
            path = cache.file_path(name, spec.name)
            state = _cached_state(card, spec, path)
            if state == "current" and not force:
                actions.append("fetch")
            else:
                if config.offline():
                    raise _offline_error(card, spec, path)
                result = _download_file(card, spec, path, progress)
                _record(card, spec, result.sha256, result.size, result.url)
                actions.append("download" if state == "absent" else "update")
            files[_role_key(spec, files)] = path

        converted = _convert(card, files) if convert else None
    finally:
        shutil.rmtree(cache.file_path(name, sources.PIP_ARCHIVE_DIR), ignore_errors=True)
        model_lock.release()

    action = "fetch"
    if "update" in actions:
        action = "update"
    elif "download" in actions:
        action = "download"
    logger.info("%s %s: %s", action, name, ", ".join(str(path) for path in files.values()))
    return FetchResult(name, files, converted, action)
