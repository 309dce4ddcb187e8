"""Reading and writing images for the style engine.

Every image is read as RGB floats in [0, 1] of shape [1, 3, H, W]:

- the EXIF orientation is applied, so a photo taken in portrait stays upright;
- alpha is composited over white, because a transparent background usually means "paper" in artwork and
  a black one would pull the style statistics towards black;
- grayscale, palette and CMYK images are converted to RGB;
- 16-bit PNG and TIFF files keep their full precision (Pillow would round 16-bit RGB PNGs to 8 bits, so
  those are decoded with OpenCV and TIFFs with tifffile).

Outputs are PNG (8-bit), JPEG (quality 95, no chroma subsampling) or TIFF (16-bit), chosen by suffix.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from modelzoo.errors import ImageError

logger = logging.getLogger(__name__)

# Large prints are the point of multi-scale and tiling, so lift Pillow's decompression-bomb limit to one
# gigapixel (the limit neural-style-pt also sets).
Image.MAX_IMAGE_PIXELS = 1_000_000_000

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
OUTPUT_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WHITE = 1.0


def load_image(path: str | Path) -> torch.Tensor:
    """Read ``path`` as RGB floats in [0, 1], shape [1, 3, H, W]; raise ``ImageError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}", hint="check the path")
    try:
        array = _read_array(path)
    except ImageError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise ImageError(f"cannot read image {path}: {error}",
                         hint="use a PNG, JPEG or TIFF file that an image viewer can open") from error
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


def _read_array(path: Path) -> np.ndarray:
    """Decode ``path`` to an H x W x 3 float32 array in [0, 1]."""
    if path.suffix.lower() in (".tif", ".tiff") and _tiff_is_high_depth(path):
        return _read_tiff(path)
    if _png_bit_depth(path) == 16:
        high = _read_png16(path)
        if high is not None:
            return high
    with Image.open(path) as image:
        image.load()
        return _pil_to_rgb(ImageOps.exif_transpose(image))


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to RGB floats, compositing alpha over white."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        gray = np.asarray(image, dtype=np.float32) / 65535.0
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("I", "F"):
        gray = np.asarray(image, dtype=np.float32)
        scale = 65535.0 if gray.max(initial=0.0) > 255.0 else 255.0
        return np.repeat(np.clip(gray / scale, 0.0, 1.0)[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        return _over_white(rgba[..., :3], rgba[..., 3:])
    # Pillow's CMYK -> RGB conversion is the naive complement; images with an ICC profile would need
    # colour management for exact colours.
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return rgb * alpha + WHITE * (1.0 - alpha)


def _png_bit_depth(path: Path) -> int | None:
    """Return the bit depth from a PNG's IHDR chunk, or None for other files."""
    with open(path, "rb") as handle:
        head = handle.read(33)
    if len(head) < 33 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return head[24]


def _read_png16(path: Path) -> np.ndarray | None:
    """Decode a 16-bit PNG with OpenCV at full precision, or return None when OpenCV is missing."""
    try:
        import cv2
    except ImportError:
        logger.warning("OpenCV is not installed, so %s is read with Pillow at 8 bits per channel; "
                       "install opencv-python-headless to keep 16 bits", path)
        return None
    data = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise ImageError(f"cannot read image {path}: OpenCV could not decode this PNG")
    if data.dtype != np.uint16:
        return None
    values = data.astype(np.float32) / 65535.0
    if values.ndim == 2:
        return np.repeat(values[..., None], 3, axis=2)
    if values.shape[2] == 2:
        return _over_white(np.repeat(values[..., :1], 3, axis=2), values[..., 1:])
    if values.shape[2] == 4:
        return _over_white(values[..., 2::-1], values[..., 3:])
    return np.ascontiguousarray(values[..., ::-1])  # OpenCV decodes to BGR


def _tiff_is_high_depth(path: Path) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            return tiff.pages[0].dtype.itemsize > 1  # type: ignore[union-attr]
    except (tifffile.TiffFileError, struct.error, ValueError, IndexError):
        return False


def _read_tiff(path: Path) -> np.ndarray:
    """Read a 16-bit or float TIFF with tifffile; gray, RGB, RGBA and CMYK (as ink) are handled."""
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0]
        data = page.asarray()  # type: ignore[union-attr]
        photometric = getattr(page, "photometric", None)
    if np.issubdtype(data.dtype, np.integer):
        values = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    else:
        values = np.clip(data.astype(np.float32), 0.0, 1.0)
    if values.ndim == 2:
        return np.repeat(values[..., None], 3, axis=2)
    if values.ndim == 3 and values.shape[0] in (1, 3, 4) and values.shape[2] not in (1, 3, 4):
        values = values.transpose(1, 2, 0)  # planar (separate) configuration
    channels = values.shape[2]
    if photometric is not None and int(photometric) == 5 and channels >= 4:  # SEPARATED = CMYK ink
        cmy, key = values[..., :3], values[..., 3:4]
        return (1.0 - cmy) * (1.0 - key)
    if channels == 1:
        return np.repeat(values, 3, axis=2)
    if channels == 2:
        return _over_white(np.repeat(values[..., :1], 3, axis=2), values[..., 1:])
    if channels >= 4:
        return _over_white(values[..., :3], values[..., 3:4])
    return values


def list_images(folder: str | Path) -> list[Path]:
    """Return the image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    images = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    if not images:
        raise ImageError(f"no images in folder {folder}",
                         hint=f"put {', '.join(IMAGE_SUFFIXES)} files there or name the files directly")
    return images


def save_image(image: torch.Tensor | np.ndarray, path: str | Path) -> Path:
    """Write RGB floats in [0, 1] ([1, 3, H, W], [3, H, W] or H x W x 3) to ``path``; the suffix picks the format.

    PNG is 8-bit, JPEG is quality 95 without chroma subsampling, TIFF is 16-bit (uncompressed RGB).
    The folder is created if needed.
    """
    path = Path(path)
    kind = OUTPUT_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ImageError(f"cannot write {path}: unknown output format '{path.suffix}'",
                         hint="use one of " + ", ".join(OUTPUT_FORMATS))
    array = _to_hwc(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "tiff":
            import tifffile

            tifffile.imwrite(path, np.round(array * 65535.0).astype(np.uint16), photometric="rgb")
        else:
            pixels = Image.fromarray(np.round(array * 255.0).astype(np.uint8), "RGB")
            if kind == "jpeg":
                pixels.save(path, "JPEG", quality=95, subsampling=0)
            else:
                pixels.save(path, "PNG")
    except OSError as error:
        raise ImageError(f"cannot write image {path}: {error}") from error
    return path


def _to_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Return an H x W x 3 float64 array clipped to [0, 1]."""
    if isinstance(image, torch.Tensor):
        array = image.detach().to("cpu", torch.float64).numpy()
        if array.ndim == 4:
            array = array[0]
        array = array.transpose(1, 2, 0)
    else:
        array = np.asarray(image, dtype=np.float64)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageError(f"expected an RGB image, got an array of shape {array.shape}")
    return np.clip(array, 0.0, 1.0)


def to_pil(image: torch.Tensor) -> Image.Image:
    """Return an 8-bit RGB Pillow image of RGB floats in [0, 1]."""
    return Image.fromarray(np.round(_to_hwc(image) * 255.0).astype(np.uint8), "RGB")


def from_pil(image: Image.Image) -> torch.Tensor:
    """Return a Pillow image as RGB floats in [0, 1], shape [1, 3, H, W]."""
    array = _pil_to_rgb(image)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]
