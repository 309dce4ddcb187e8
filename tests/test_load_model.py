"""``nstzoo fetch`` of a Caffe card from a loopback mirror, conversion once, and ``load_model``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures_http import sha256, write_card

from converters.caffe.writer import write_caffemodel
from converters.errors import UnknownLayerError
from modelzoo import load_model
from modelzoo.convert import ensure_converted
from modelzoo.errors import NotCachedError
from modelzoo.features import from_network_input, to_network_input
from modelzoo.fetch import fetch
from registry import InputContract, Registry

PROTOTXT = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "drop1" type: "Dropout" bottom: "pool1" top: "pool1" }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def tiny_blobs() -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    return {"conv1": [rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), rng.normal(0, 0.1, 4).astype(np.float32)],
            "fc": [rng.normal(0, 0.1, (3, 64)).astype(np.float32), np.zeros(3, np.float32)]}


@pytest.fixture
def tiny_card(tmp_path: Path, http_server, nstzoo_home: Path) -> dict[str, bytes]:  # noqa: F811
    """A Caffe card 'tiny' in the user registry whose two files are served on 127.0.0.1."""
    caffemodel = write_caffemodel(tmp_path / "tiny.caffemodel", PROTOTXT, tiny_blobs()).read_bytes()
    files = {"tiny.caffemodel": caffemodel, "deploy.prototxt": PROTOTXT.encode()}
    for name, body in files.items():
        http_server.add(name, body)
    write_card(nstzoo_home, "tiny", [
        {"name": "tiny.caffemodel", "role": "weights", "sources": [http_server.url("tiny.caffemodel")],
         "size": len(caffemodel), "sha256": sha256(caffemodel)},
        {"name": "deploy.prototxt", "role": "prototxt", "sources": [http_server.url("deploy.prototxt")],
         "size": len(files["deploy.prototxt"]), "sha256": sha256(files["deploy.prototxt"])},
    ], format="caffe", layers={"names": ["conv1", "relu1", "pool1", "features"], "nodes": {"features": "pool1"}},
        input={"channel_order": "BGR", "value_range": 255.0, "mean": [10.0, 20.0, 30.0]},
        defaults={"content_layers": ["relu1"], "style_layers": ["relu1"]})
    return files


def test_fetch_converts_once_and_loads(tiny_card, nstzoo_home: Path) -> None:
    result = fetch("tiny")
    converted = result.converted
    assert converted is not None and (converted / "graph.json").is_file()
    weights_file = converted / "weights.safetensors"
    first_write = weights_file.stat().st_mtime_ns
    fetch("tiny")
    assert weights_file.stat().st_mtime_ns == first_write, "unchanged sources were converted again"

    model = load_model("tiny")
    # The card's transforms strip Dropout and drop the classifier (fc, prob).
    assert model.layer_names == ["conv1", "relu1", "pool1"]
    x = torch.randn(1, 3, 8, 8)
    out = model.extract(x, ["conv1", "relu1", "features"])
    assert out["conv1"].min() < 0 <= out["relu1"].min()
    torch.testing.assert_close(out["features"], torch.nn.functional.max_pool2d(out["relu1"], 2))


def test_changed_source_is_converted_again(tiny_card, nstzoo_home: Path, tmp_path: Path) -> None:
    result = fetch("tiny")
    card = Registry.load(nstzoo_home / "registry").get("tiny")
    files = dict(result.files)
    changed = tiny_blobs()
    changed["conv1"][1] = changed["conv1"][1] + 1.0
    files["weights"] = write_caffemodel(tmp_path / "changed.caffemodel", PROTOTXT, changed)
    before = load_model("tiny").extract(torch.zeros(1, 3, 8, 8), ["conv1"])["conv1"]
    ensure_converted(card, files, result.converted.parent)
    after = load_model("tiny").extract(torch.zeros(1, 3, 8, 8), ["conv1"])["conv1"]
    torch.testing.assert_close(after, before + 1.0)
    assert not list(result.converted.parent.glob(".tmp*")), "a temporary folder was left behind"


def test_load_model_options(tiny_card, nstzoo_home: Path) -> None:
    fetch("tiny")
    truncated = load_model("tiny", layers=["relu1"])
    assert truncated.layer_names == ["conv1", "relu1"]
    averaged = load_model("tiny", pooling="avg")
    x = torch.randn(1, 3, 8, 8)
    out = averaged.extract(x, ["relu1", "pool1"])
    torch.testing.assert_close(out["pool1"], torch.nn.functional.avg_pool2d(out["relu1"], 2))
    with pytest.raises(UnknownLayerError, match="relu4_2") as raised:
        load_model("tiny").extract(x, ["relu4_2"])
    assert "relu1" in str(raised.value)


def test_load_model_from_folder(tiny_card, nstzoo_home: Path) -> None:
    converted = fetch("tiny").converted
    model = load_model(converted)
    assert model.card is None
    assert model.extract(torch.zeros(1, 3, 8, 8), ["pool1"])["pool1"].shape == (1, 4, 4, 4)


def test_load_model_not_cached(tiny_card, nstzoo_home: Path) -> None:
    with pytest.raises(NotCachedError) as raised:
        load_model("tiny")
    assert raised.value.hint == "nstzoo fetch tiny"


def test_to_network_input_bgr_mean() -> None:
    # An RGB pixel (1, 2, 3) on the 0-255 scale reaches a BGR network with mean B=10, G=20, R=30 as
    # (3 - 10, 2 - 20, 1 - 30).
    contract = InputContract("BGR", 255.0, (10.0, 20.0, 30.0))
    rgb01 = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1) / 255
    x = to_network_input(rgb01, contract)
    torch.testing.assert_close(x.reshape(3), torch.tensor([-7.0, -18.0, -29.0]))
    torch.testing.assert_close(from_network_input(x, contract), rgb01)


def test_to_network_input_std_round_trip() -> None:
    contract = InputContract("RGB", 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    rgb01 = torch.rand(2, 3, 5, 4)
    x = to_network_input(rgb01, contract)
    torch.testing.assert_close(x[:, 1], (rgb01[:, 1] - 0.456) / 0.224)
    torch.testing.assert_close(from_network_input(x, contract), rgb01)


def test_vgg19_card_mean_is_bgr() -> None:
    card = Registry.load(None).get("vgg19")
    assert card.input.channel_order == "BGR"
    assert card.input.mean[0] == pytest.approx(103.939)
