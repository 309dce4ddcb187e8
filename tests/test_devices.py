"""A network split across devices: parsing, explicit and automatic splits, memory estimates.

Several "cpu" entries make several stages on the CPU, which runs the split and the hand-over of
activations between stages on any machine. The CUDA test runs only where torch finds a GPU.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from converters.graph import GraphSpec, Node
from converters.network import GraphNet
from modelzoo import devices
from modelzoo.errors import OptionError

LAYERS = ["relu0", "relu2", "relu4"]


def small_vgg(seed: int = 0, max_pool: bool = True) -> GraphNet:
    generator = torch.Generator().manual_seed(seed)
    nodes, weights = [], {}
    previous, channels_in = "data", 3
    for index, (channels, pool) in enumerate([(8, False), (8, True), (16, False), (16, True), (32, False)]):
        nodes.append(Node(f"conv{index}", "conv2d", [previous], [f"c{index}"], {"padding": 1}))
        weights[f"conv{index}.weight"] = torch.randn(channels, channels_in, 3, 3, generator=generator) * math.sqrt(2 / (9 * channels_in))
        weights[f"conv{index}.bias"] = torch.randn(channels, generator=generator) * 0.1
        nodes.append(Node(f"relu{index}", "relu", [f"c{index}"], [f"r{index}"]))
        previous = f"r{index}"
        if pool:
            mode = "max" if max_pool else "avg"
            nodes.append(Node(f"pool{index}", "pool2d", [previous], [f"p{index}"], {"mode": mode, "kernel": 2, "stride": 2}))
            previous = f"p{index}"
        channels_in = channels
    return GraphNet(GraphSpec(nodes, {"data": [1, 3, 0, 0]}, [previous]), weights)


# --- device lists ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("cuda:0,cuda:1,cpu", ["cuda:0", "cuda:1", "cpu"]),
    ("0,1,c", ["cuda:0", "cuda:1", "cpu"]),
    ("cpu,cpu,cpu", ["cpu", "cpu", "cpu"]),
    (" cuda , -1 ", ["cuda:0", "cpu"]),
])
def test_parse_devices(text: str, expected: list[str]) -> None:
    assert devices.parse_devices(text) == expected


@pytest.mark.parametrize("text", ["gpu0", "cuda:x", "0,,1", ""])
def test_parse_devices_rejects(text: str) -> None:
    with pytest.raises(OptionError, match="invalid device"):
        devices.parse_devices(text)


# --- explicit split ----------------------------------------------------------------------------------


def test_three_cpu_stages_match_one_device() -> None:
    net = small_vgg()
    placed = devices.place_model(copy.deepcopy(net), "cpu,cpu,cpu", split_at=[3, 7])
    assert placed.stages == [(0, 3), (3, 7), (7, 12)]
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(2))

    single_input = x.clone().requires_grad_(True)
    single = net.extract(single_input, LAYERS)
    placed_input = x.clone().requires_grad_(True)
    split = placed.extract(placed_input, LAYERS)

    # The same ops run in the same order on the same device, so the values are bitwise equal.
    for name in LAYERS:
        torch.testing.assert_close(split[name], single[name], rtol=0, atol=0)
    sum(value.square().sum() for value in single.values()).backward()
    sum(value.square().sum() for value in split.values()).backward()
    torch.testing.assert_close(placed_input.grad, single_input.grad, rtol=1e-6, atol=1e-6)


def test_placed_model_passes_through() -> None:
    net = small_vgg()
    placed = devices.place_model(net, ["cpu", "cpu"], split_at=[5])
    assert placed.layer_names == net.layer_names
    assert placed.card is None
    with pytest.raises(Exception, match="relu9"):
        placed.check_layers(["relu9"])


@pytest.mark.parametrize("split_at, problem", [([3], "need 2 split indices"), ([7, 3], "must increase"),
                                               ([0, 5], "must increase"), ([5, 12], "must increase")])
def test_invalid_split_rejected(split_at: list[int], problem: str) -> None:
    with pytest.raises(OptionError, match=problem):
        devices.place_model(small_vgg(), "cpu,cpu,cpu", split_at=split_at)


# --- automatic split ---------------------------------------------------------------------------------


def test_auto_split_follows_free_memory() -> None:
    # Eight equal nodes; device a has three times b's free memory, so a takes 6 nodes and b takes 2.
    assert devices.auto_split([1] * 8, ["cuda:0", "cuda:1"], {"cuda:0": 3 * 2**30, "cuda:1": 2**30}) == [6]
    # Three stages sharing one device split its memory equally: 3 + 3 + 3 of nine equal nodes.
    assert devices.auto_split([1] * 9, ["cpu", "cpu", "cpu"], {"cpu": 2**30}) == [3, 6]


def test_auto_split_gives_every_device_a_node() -> None:
    # One huge first node must not leave later devices empty.
    split = devices.auto_split([100, 1, 1], ["cpu", "cpu", "cpu"], {"cpu": 2**30})
    assert split == [1, 2]


def test_automatic_split_balances_estimate() -> None:
    net = small_vgg()
    costs = devices.node_memory(net, net.layer_names, 128, 128)
    placed = devices.place_model(copy.deepcopy(net), "cpu,cpu,cpu", height=128, width=128)
    assert len(placed.stages) == 3
    stage_costs = [sum(costs[start:stop]) for start, stop in placed.stages]
    # Each stage is within one node's cost of an equal third.
    assert max(stage_costs) <= sum(costs) / 3 + max(costs)
    x = torch.rand(1, 3, 64, 64)
    for name, value in placed.extract(x, LAYERS).items():
        torch.testing.assert_close(value, net.extract(x, [name])[name], rtol=0, atol=0)


def test_engine_with_three_cpu_stages_matches_one() -> None:
    from modelzoo.engine import stylize

    content = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    style = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(4))
    options = dict(content_layers=("relu2",), style_layers=("relu0", "relu2", "relu4"), image_size=48,
                   iterations=5, optimizer="lbfgs", seed=0, print_every=0)
    single = stylize(content, style, model=small_vgg(), **options).image
    split = stylize(content, style, model=small_vgg(), devices=("cpu", "cpu", "cpu"), split_at=(3, 7), **options).image
    torch.testing.assert_close(split, single, rtol=1e-5, atol=1e-5)


# --- memory estimates --------------------------------------------------------------------------------


def test_shape_pass_matches_real_outputs() -> None:
    # The meta-device shape pass must give exactly the bytes of the real outputs.
    net = small_vgg()
    height, width = 45, 61  # odd sizes exercise the pooling's rounding
    x = torch.rand(1, 3, height, width)
    real = []
    values = {"data": x}
    with torch.no_grad():
        for index, node in enumerate(net.spec.nodes):
            output = net.layers[index](*(values[name] for name in node.inputs))
            values[node.outputs[0]] = output
            real.append(output.numel() * output.element_size())
    sizes = devices._node_sizes(net, len(net.spec.nodes) - 1, height, width)
    assert [size.output for size in sizes] == real


def measured_saved_bytes(net: GraphNet, layers: list[str], height: int, width: int) -> int:
    """Return the bytes autograd saves for backward while extracting ``layers``, parameters excluded,
    each storage counted once."""
    parameters = {id(parameter) for parameter in net.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in parameters:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    image = torch.rand(1, 3, height, width, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        net.extract(image, layers)
    return sum(saved.values())


def test_estimate_brackets_measured_memory() -> None:
    # The estimate is parameters, what autograd saves, and gradients in flight (twice the largest
    # activation), so it must lie between the measured parameters + saved bytes and 3x them.
    net = small_vgg()
    estimate = devices.estimate_memory(net, LAYERS, 256, 256, "cpu")["cpu"]
    parameters = sum(p.numel() * p.element_size() for p in net.parameters())
    measured = parameters + measured_saved_bytes(net, LAYERS, 256, 256)
    assert measured <= estimate <= 3 * measured, f"estimate {estimate} B, measured {measured} B"


def test_saved_bytes_match_autograd() -> None:
    # The meta pass must see exactly what a real run saves (parameters excluded on both sides).
    net = small_vgg()
    (stage,) = devices.estimate_stages(net, LAYERS, 96, 128, "cpu")
    assert stage.saved_bytes == measured_saved_bytes(net, LAYERS, 96, 128)


def test_estimate_counts_only_up_to_deepest_layer() -> None:
    net = small_vgg()
    shallow = devices.estimate_memory(net, ["relu0"], 256, 256, "cpu")["cpu"]
    deep = devices.estimate_memory(net, ["relu4"], 256, 256, "cpu")["cpu"]
    # Running up to relu0, conv0 saves the 3-channel image and relu0 saves its 8-channel output. The
    # gradients in flight are twice the 8-channel map. All are float32 at 256 x 256.
    parameters = sum(p.numel() * p.element_size() for p in net.parameters())
    assert shallow == parameters + (3 + 8 + 2 * 8) * 256 * 256 * 4
    assert deep > shallow


def test_format_estimate_lists_stages() -> None:
    net = small_vgg()
    text = devices.format_estimate(net, LAYERS, 512, 512, "c,c", split_at=[5])
    assert "512x512" in text
    assert "nodes 0-4 (conv0 .. pool1)" in text
    assert "nodes 5-11 (conv2 .. relu4)" in text
    assert "split at node indices 5" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_and_cpu_stages_match_cpu() -> None:
    net = small_vgg()
    placed = devices.place_model(copy.deepcopy(net), "cuda:0,cpu", split_at=[5])
    assert next(placed.net.layers[0].parameters()).device.type == "cuda"
    x = torch.rand(1, 3, 64, 64)
    split = placed.extract(x.cuda(), LAYERS)
    reference = net.extract(x, LAYERS)
    for name in LAYERS:
        assert split[name].device.type == "cuda"  # outputs come back to the first device
        # cuDNN and CPU convolutions round differently (TF32 is off for convs by default): 1e-4 relative.
        torch.testing.assert_close(split[name].cpu(), reference[name], rtol=1e-4, atol=1e-4)
    text = devices.format_estimate(net, LAYERS, 1024, 1024, "cuda:0,cpu")
    assert "cuda:0" in text
    assert "free" in text
