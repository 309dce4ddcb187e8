"""Convert a cached model's source files once, and again only when they change.

The converted folder (``<model dir>/converted``) contains ``graph.json``, ``weights.safetensors`` and
``source.json``: the sha256 of each source file and the graph-spec version it was converted with. When the
stamp matches the files, conversion is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

from converters import formats, transforms
from converters.graph import GRAPH_FILE, GRAPH_VERSION, WEIGHTS_FILE, save_converted
from registry import ModelCard

logger = logging.getLogger(__name__)

CONVERTED_DIR = "converted"
STAMP_FILE = "source.json"
# Bump when the converter's output changes for the same source files, so caches convert again.
CONVERTER_REVISION = 1


def sha256_of(path: Path) -> str:
    """Return the hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp(card: ModelCard, sources: dict[str, Path]) -> dict:
    return {
        "model": card.name,
        "format": card.format,
        "graph_version": GRAPH_VERSION,
        "converter_revision": CONVERTER_REVISION,
        "transforms": {"strip_dropout": card.transforms.strip_dropout, "drop_classifier": card.transforms.drop_classifier,
                       "rename_keys": [list(pair) for pair in card.transforms.rename_keys]},
        "input_shape": list(card.input_shape),
        "sources": {role: {"file": path.name, "sha256": sha256_of(path)} for role, path in sorted(sources.items())},
    }


def _read_stamp(folder: Path) -> dict | None:
    try:
        return json.loads((folder / STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def convert_files(card: ModelCard, weights_path: Path, prototxt: Path | None = None):
    """Convert ``weights_path`` as ``card`` describes it and apply its transforms; return (spec, weights).

    Truncation is left to load time, because it depends on the layers a caller asks for.
    """
    options = formats.ConvertOptions(
        prototxt=prototxt,
        input_shape=tuple(card.input_shape) or None,
        layout=card.layout,
        rename_keys=tuple(card.transforms.rename_keys),
    )
    spec, weights = formats.convert(card.format, weights_path, options)
    if card.transforms.rename_keys and card.format not in ("pytorch", "safetensors"):
        weights = transforms.rename_keys(weights, card.transforms.rename_keys)
    if card.transforms.strip_dropout:
        spec, weights = transforms.strip_dropout(spec, weights)
    if card.transforms.drop_classifier:
        spec, weights = transforms.drop_classifier(spec, weights)
    spec.metadata["model"] = card.name
    return spec, weights


def ensure_converted(card: ModelCard, files: dict[str, Path], model_dir: Path) -> Path | None:
    """Convert ``files`` (roles ``weights`` and, for Caffe, ``prototxt``) into ``model_dir/converted``.

    Returns the converted folder, or None for a card that is not a feature network (upscalers load as
    published). The
    folder is built under a temporary name in ``model_dir`` and renamed into place, so a reader never sees
    half of it. A stamp that matches the source files skips the work.
    """
    if card.task != "features":
        logger.debug("model %s is a %s model, loaded as published; nothing to convert", card.name, card.task)
        return None
    weights_path = files.get("weights")
    if weights_path is None:
        logger.info("model %s has no weights file; nothing to convert", card.name)
        return None
    sources = {"weights": Path(weights_path)}
    if files.get("prototxt") is not None:
        sources["prototxt"] = Path(files["prototxt"])
    target = Path(model_dir) / CONVERTED_DIR
    stamp = _stamp(card, sources)
    if (target / GRAPH_FILE).is_file() and (target / WEIGHTS_FILE).is_file() and _read_stamp(target) == stamp:
        logger.debug("%s is converted already (%s)", card.name, target)
        return target

    logger.info("converting %s (%s) to %s", card.name, card.format, target)
    spec, weights = convert_files(card, sources["weights"], sources.get("prototxt"))
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-convert-", dir=model_dir))
    try:
        save_converted(staging, spec, weights)
        del weights
        (staging / STAMP_FILE).write_text(json.dumps(stamp, indent=1), encoding="utf-8")
        if target.exists():
            # A rename cannot replace a non-empty folder, so the old one moves aside first.
            old = Path(tempfile.mkdtemp(prefix=".tmp-old-", dir=model_dir))
            target.replace(old / CONVERTED_DIR)
            staging.replace(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.replace(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
