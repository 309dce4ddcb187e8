"""Reading and writing images: EXIF orientation, alpha, grayscale, CMYK, 16-bit, output formats, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modelzoo.errors import ImageError
from modelzoo.images import list_images, load_image, save_image
from test_engine_support import CAT_PHOTO

EXIF_ORIENTATION = 0x0112
JPEG_TOLERANCE = 12 / 255  # JPEG at quality 95 changes 8-bit values by a few levels on a real photo


@pytest.fixture
def cat() -> np.ndarray:
    """The real cat photo as 8-bit RGB, H x W x 3 (300 x 451)."""
    return np.asarray(Image.open(CAT_PHOTO).convert("RGB"))


def as_hwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor[0].permute(1, 2, 0).numpy()


def test_rgb_photo_loads_as_floats(cat):
    image = load_image(CAT_PHOTO)
    assert image.shape == (1, 3, 300, 451)
    assert image.dtype == torch.float32
    np.testing.assert_allclose(as_hwc(image), cat / 255.0, atol=1e-6)


def test_exif_orientation_applied(tmp_path, cat):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # the camera was turned: display rotated 90 degrees clockwise
    Image.fromarray(cat).save(path, quality=95, exif=exif)
    image = as_hwc(load_image(path))
    assert image.shape == (451, 300, 3)
    upright = np.rot90(cat, k=-1) / 255.0  # 90 degrees clockwise
    assert np.abs(image - upright).mean() < 0.02


def test_alpha_composited_over_white(tmp_path, cat):
    alpha = np.zeros(cat.shape[:2], dtype=np.uint8)
    alpha[:, : cat.shape[1] // 2] = 255
    alpha[:, cat.shape[1] // 2:] = 64
    path = tmp_path / "alpha.png"
    Image.fromarray(np.dstack([cat, alpha]), "RGBA").save(path)
    image = as_hwc(load_image(path))
    opaque = cat[:, :10] / 255.0
    np.testing.assert_allclose(image[:, :10], opaque, atol=1e-6)
    # 64/255 of the colour plus the rest of white, by hand.
    a = 64 / 255
    expected = cat[:, -10:] / 255.0 * a + (1 - a)
    np.testing.assert_allclose(image[:, -10:], expected, atol=1e-6)


def test_grayscale_becomes_rgb(tmp_path, cat):
    path = tmp_path / "gray.png"
    gray = Image.fromarray(cat).convert("L")
    gray.save(path)
    image = as_hwc(load_image(path))
    assert image.shape == (300, 451, 3)
    for channel in range(3):
        np.testing.assert_allclose(image[..., channel], np.asarray(gray) / 255.0, atol=1e-6)


def test_cmyk_jpeg_becomes_rgb(tmp_path, cat):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(cat).convert("CMYK").save(path, quality=95)
    image = as_hwc(load_image(path))
    assert image.shape == (300, 451, 3)
    assert np.abs(image - cat / 255.0).mean() < JPEG_TOLERANCE


def test_16bit_png_keeps_precision(tmp_path, cat):
    cv2 = pytest.importorskip("cv2")
    values = cat.astype(np.uint16) * 257 + np.arange(cat.shape[1], dtype=np.uint16)[None, :, None] % 200
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), values[..., ::-1].copy())  # OpenCV writes BGR
    image = as_hwc(load_image(path))
    # 8-bit decoding would be off by up to 200/65535; a float32 of v/65535 is exact to 1e-7.
    np.testing.assert_allclose(image, values / 65535.0, atol=1e-6)


def test_16bit_grayscale_png(tmp_path, cat):
    values = (cat[..., 1].astype(np.uint16) * 257)
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    image = as_hwc(load_image(path))
    np.testing.assert_allclose(image[..., 0], values / 65535.0, atol=1e-6)


def test_16bit_tiff_round_trip(tmp_path, cat):
    image = torch.from_numpy(cat / 255.0 * 0.9 + 0.05).permute(2, 0, 1)[None].float()
    path = save_image(image, tmp_path / "out.tif")
    import tifffile

    stored = tifffile.imread(path)
    assert stored.dtype == np.uint16
    np.testing.assert_allclose(as_hwc(load_image(path)), as_hwc(image), atol=0.5 / 65535 + 1e-7)


def test_png_and_jpeg_outputs(tmp_path, cat):
    image = torch.from_numpy(cat / 255.0).permute(2, 0, 1)[None].float()
    png = save_image(image, tmp_path / "out.png")
    np.testing.assert_array_equal(np.asarray(Image.open(png)), cat)
    jpeg = save_image(image, tmp_path / "nested" / "out.jpg")
    assert Image.open(jpeg).format == "JPEG"
    assert np.abs(as_hwc(load_image(jpeg)) - cat / 255.0).mean() < JPEG_TOLERANCE / 4


def test_unknown_output_suffix(tmp_path):
    with pytest.raises(ImageError, match=r"out\.gif.*unknown output format"):
        save_image(torch.rand(1, 3, 4, 4), tmp_path / "out.gif")


def test_unreadable_file_named(tmp_path):
    path = tmp_path / "not_an_image.jpg"
    path.write_bytes(b"this is a text file, not a JPEG")
    with pytest.raises(ImageError, match="not_an_image.jpg"):
        load_image(path)


def test_missing_file_named(tmp_path):
    with pytest.raises(ImageError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def test_list_images_filters_and_sorts(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [path.name for path in list_images(tmp_path)] == ["a.jpg", "b.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageError, match="no images in folder"):
        list_images(empty)
