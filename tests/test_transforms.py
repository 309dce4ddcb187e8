"""Model surgery on graph specs: strip Dropout, drop the classifier, truncate, swap pooling, rename keys."""

from __future__ import annotations

import pytest
import torch

from converters.errors import GraphSpecError, UnknownLayerError
from converters.graph import GraphSpec, Node
from converters.network import GraphNet
from converters.transforms import drop_classifier, rename_keys, strip_dropout, swap_pooling, truncate


def small_vgg() -> tuple[GraphSpec, dict[str, torch.Tensor]]:
    """conv1 -> relu1 -> pool1 -> drop1 -> fc6 -> relu6 -> drop6 -> fc7 -> prob, on 1x2x4x4."""
    nodes = [
        Node("conv1", "conv2d", ["data"], ["conv1"], {"padding": 1}),
        Node("relu1", "relu", ["conv1"], ["relu1"]),
        Node("pool1", "pool2d", ["relu1"], ["pool1"], {"mode": "max", "kernel": 2, "stride": 2, "ceil_mode": True}),
        Node("drop1", "dropout", ["pool1"], ["drop1"]),
        Node("fc6", "linear", ["drop1"], ["fc6"]),
        Node("relu6", "relu", ["fc6"], ["relu6"]),
        Node("drop6", "dropout", ["relu6"], ["drop6"]),
        Node("fc7", "linear", ["drop6"], ["fc7"]),
        Node("prob", "softmax", ["fc7"], ["prob"]),
    ]
    generator = torch.Generator().manual_seed(0)
    weights = {
        "conv1.weight": torch.randn(3, 2, 3, 3, generator=generator), "conv1.bias": torch.randn(3, generator=generator),
        "fc6.weight": torch.randn(5, 12, generator=generator), "fc6.bias": torch.randn(5, generator=generator),
        "fc7.weight": torch.randn(4, 5, generator=generator), "fc7.bias": torch.randn(4, generator=generator),
    }
    return GraphSpec(nodes, {"data": [1, 2, 4, 4]}, ["prob"]), weights


def test_strip_dropout_rewires_readers() -> None:
    spec, weights = small_vgg()
    stripped, stripped_weights = strip_dropout(spec, weights)
    assert "drop1" not in stripped.node_names
    assert "drop6" not in stripped.node_names
    assert stripped.node("fc6").inputs == ["pool1"]
    x = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(GraphNet(stripped, stripped_weights)(x), GraphNet(spec, weights)(x), rtol=0, atol=0)
    assert spec.node_names[3] == "drop1", "the original spec was changed"


def test_drop_classifier_cuts_at_first_fc() -> None:
    spec, weights = small_vgg()
    features, feature_weights = drop_classifier(spec, weights)
    assert features.node_names == ["conv1", "relu1", "pool1", "drop1"]
    assert features.outputs == ["drop1"]
    assert set(feature_weights) == {"conv1.weight", "conv1.bias"}


def test_drop_classifier_without_fc_is_unchanged() -> None:
    spec, weights = small_vgg()
    convolutional = truncate(spec, "pool1")
    result, _ = drop_classifier(convolutional, weights)
    assert result.node_names == convolutional.node_names


def test_truncate_after_deepest_layer() -> None:
    spec, weights = small_vgg()
    cut = truncate(spec, "relu1")
    assert cut.node_names == ["conv1", "relu1"]
    assert cut.outputs == ["relu1"]
    x = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(GraphNet(cut, weights)(x), GraphNet(spec, weights).extract(x, ["relu1"])["relu1"])


def test_truncate_unknown_layer_lists_valid_names() -> None:
    spec, _ = small_vgg()
    with pytest.raises(UnknownLayerError, match="relu9") as raised:
        truncate(spec, "relu9")
    assert "conv1" in str(raised.value)


def test_swap_pooling_to_average() -> None:
    spec, weights = small_vgg()
    averaged = swap_pooling(spec, "avg")
    assert averaged.node("pool1").attrs["mode"] == "avg"
    assert spec.node("pool1").attrs["mode"] == "max"
    x = torch.arange(32, dtype=torch.float32).reshape(1, 2, 4, 4)
    relu = GraphNet(spec, weights).extract(x, ["relu1"])["relu1"]
    pooled = GraphNet(averaged, weights).extract(x, ["pool1"])["pool1"]
    torch.testing.assert_close(pooled, torch.nn.functional.avg_pool2d(relu, 2))
    with pytest.raises(GraphSpecError, match="'median'"):
        swap_pooling(spec, "median")


def test_rename_keys_by_prefix() -> None:
    weights = {"classifier.1.weight": torch.zeros(1), "classifier.1.bias": torch.zeros(1), "features.0.weight": torch.ones(1)}
    renamed = rename_keys(weights, [("classifier.1", "classifier.0")])
    assert set(renamed) == {"classifier.0.weight", "classifier.0.bias", "features.0.weight"}
    # "classifier.10" must not match the prefix "classifier.1".
    assert set(rename_keys({"classifier.10.weight": torch.zeros(1)}, [("classifier.1", "x")])) == {"classifier.10.weight"}
    with pytest.raises(GraphSpecError, match="two keys"):
        rename_keys({"a.w": torch.zeros(1), "b.w": torch.zeros(1)}, [("a", "b")])
