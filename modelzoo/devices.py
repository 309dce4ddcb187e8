"""A feature network split across several devices, and the memory estimate that chooses the split.

The nodes of a ``GraphNet`` run in execution order, so a split is a list of node indices: stage ``k``
runs nodes ``split_at[k-1]`` up to but not including ``split_at[k]`` on ``devices[k]``. A value produced
on one stage and read on a later one moves there with ``.to(device)``, which autograd follows backwards.

Device lists take two spellings: ``cuda:0,cuda:1,cpu`` and neural-style's ``0,1,c`` (a bare number is a
CUDA index, ``c`` or ``-1`` is the CPU). The same device may appear more than once: ``cpu,cpu,cpu`` runs
three stages on the CPU, which exercises the split and the hand-over of activations without a GPU.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from modelzoo.errors import OptionError

logger = logging.getLogger(__name__)

# Estimates run the shape pass at most this many pixels per side when the meta device cannot run an op.
FALLBACK_SIDE = 64


# --- device lists ----------------------------------------------------------------------------------


def parse_devices(text: str | Iterable[str]) -> list[str]:
    """Parse ``cuda:0,cuda:1,cpu`` or ``0,1,c`` into torch device strings such as ``["cuda:0", "cpu"]``."""
    items = [part.strip() for part in text.split(",")] if isinstance(text, str) else [str(part).strip() for part in text]
    if not items or any(not item for item in items):
        raise OptionError(f"invalid device list {text!r}: expected names separated by commas",
                          hint="use e.g. --devices cuda:0,cuda:1,cpu or --devices 0,1,c")
    devices = []
    for item in items:
        lowered = item.lower()
        if lowered in ("c", "cpu", "-1"):
            devices.append("cpu")
        elif lowered.isdigit():
            devices.append(f"cuda:{int(lowered)}")
        elif lowered == "cuda":
            devices.append("cuda:0")
        elif lowered.startswith("cuda:") and lowered[5:].isdigit():
            devices.append(f"cuda:{int(lowered[5:])}")
        elif lowered == "mps":
            devices.append("mps")
        else:
            raise OptionError(f"invalid device {item!r} in {text!r}",
                              hint="use cpu, cuda:N, mps, or neural-style's N (GPU index) and c (CPU)")
    return devices


def check_device_available(device: str) -> None:
    """Raise ``OptionError`` if ``device`` is a CUDA device this machine does not have."""
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise OptionError(f"device {device} requested, but torch {torch.__version__} finds no CUDA device",
                          hint="run 'nstzoo doctor' to see why, or run on the CPU (device cpu)")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise OptionError(f"device {device} requested, but there are only {torch.cuda.device_count()} CUDA devices",
                          hint="run 'nstzoo doctor' to list them")


def free_memory(device: str) -> int:
    """Return the free memory of ``device`` in bytes: ``torch.cuda.mem_get_info`` for CUDA, MemAvailable of
    /proc/meminfo for the CPU. Returns 0 when unknown: a CUDA device this machine lacks, MPS, or no
    /proc/meminfo (macOS, Windows)."""
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            return 0
        return int(torch.cuda.mem_get_info(index)[0])
    if device == "cpu":
        return available_ram()
    return 0


def available_ram() -> int:
    """Return MemAvailable from /proc/meminfo in bytes, or 0 when it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# --- splits ----------------------------------------------------------------------------------------


def check_split(split_at: list[int], node_count: int, device_count: int) -> list[int]:
    """Return ``split_at`` as ints after checking it has one index per extra device, strictly increasing
    inside ``1 .. node_count - 1``."""
    split = [int(index) for index in split_at]
    if len(split) != device_count - 1:
        raise OptionError(
            f"invalid split {split}: {device_count} devices need {device_count - 1} split indices",
            hint="give one node index per device after the first, e.g. --split-at 4,7 for three devices",
        )
    bounds = [0, *split, node_count]
    if any(low >= high for low, high in zip(bounds, bounds[1:])):
        raise OptionError(
            f"invalid split {split} for a network of {node_count} nodes: indices must increase and lie "
            f"between 1 and {node_count - 1}",
            hint="run with --dry-run to see the layers and the automatic split",
        )
    return split


def stage_ranges(split_at: list[int], node_count: int) -> list[tuple[int, int]]:
    """Return ``(start, stop)`` node ranges, one per stage."""
    bounds = [0, *split_at, node_count]
    return list(zip(bounds, bounds[1:]))


def auto_split(node_bytes: list[int], devices: list[str], free: dict[str, int] | None = None) -> list[int]:
    """Return split indices that give each device a share of ``node_bytes`` proportional to its free memory.

    Repeated devices share that device's free memory equally. With no free-memory figures (or all zero)
    the shares are equal. Each device gets at least one node when there are enough nodes.
    """
    if len(devices) == 1:
        return []
    if len(node_bytes) < len(devices):
        raise OptionError(f"cannot split {len(node_bytes)} nodes across {len(devices)} devices",
                          hint="use fewer devices")
    free = free if free is not None else {device: free_memory(device) for device in set(devices)}
    repeats = {device: devices.count(device) for device in devices}
    shares = [free.get(device, 0) / repeats[device] for device in devices]
    if sum(shares) <= 0:
        shares = [1.0] * len(devices)
    total = float(sum(node_bytes))
    targets = [total * share / sum(shares) for share in shares]

    split: list[int] = []
    cumulative, boundary = 0.0, targets[0]
    for index, cost in enumerate(node_bytes):
        stages_left = len(devices) - 1 - len(split)
        if index > 0 and stages_left > 0:
            nodes_left = len(node_bytes) - index
            # Split before a node when the current stage would pass its share by more than half the node's
            # cost, or when exactly one node per remaining stage is left.
            if nodes_left == stages_left or cumulative + cost / 2 > boundary:
                split.append(index)
                boundary += targets[len(split)]
        cumulative += cost
    return split


# --- the placed model --------------------------------------------------------------------------------


class PlacedModel(nn.Module):
    """A ``GraphNet`` whose nodes run on several devices; ``extract`` matches the single-device one.

    Activations returned by ``extract`` move to ``output_device`` (the first device unless given), so the
    caller can add up losses without moving tensors itself.
    """

    def __init__(self, net: nn.Module, devices: list[str], split_at: list[int], output_device: str | None = None) -> None:
        super().__init__()
        self.net = net
        self.devices = list(devices)
        self.split_at = list(split_at)
        self.output_device = torch.device(output_device or devices[0])
        nodes = net.spec.nodes
        self.stages = stage_ranges(self.split_at, len(nodes))
        self.node_devices: list[torch.device] = []
        for (start, stop), device in zip(self.stages, self.devices):
            for index in range(start, stop):
                net.layers[index].to(device)
                self.node_devices.append(torch.device(device))
        for (start, stop), device in zip(self.stages, self.devices):
            logger.info("stage on %s: nodes %d-%d (%s .. %s)", device, start, stop - 1,
                        nodes[start].name, nodes[stop - 1].name)

    # Pass-throughs so the engine can use a placed model where it would use the network.
    @property
    def layer_names(self) -> list[str]:
        return self.net.layer_names

    @property
    def input_names(self) -> list[str]:
        return self.net.input_names

    @property
    def spec(self):
        return self.net.spec

    @property
    def card(self):
        return getattr(self.net, "card", None)

    def check_layers(self, names: Iterable[str]) -> None:
        """Raise ``UnknownLayerError`` listing the valid names if any of ``names`` is not a layer."""
        self.net.check_layers(names)

    supports_taps = True

    def extract(self, x: torch.Tensor | dict[str, torch.Tensor], layer_names: Iterable[str],
                taps: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
        """Return the activations of ``layer_names`` for input ``x``, on ``output_device``.

        Only the nodes up to the deepest requested layer run. Values are dropped after their last use.
        ``taps`` work as in ``GraphNet.extract``; each runs on its layer's device.
        """
        wanted = list(dict.fromkeys(layer_names))
        self.net.check_layers(wanted)
        if not wanted:
            return {}
        nodes = self.net.spec.nodes
        index_of = {node.name: index for index, node in enumerate(nodes)}
        last = max(index_of[name] for name in wanted)
        last_use: dict[str, int] = {}
        for index in range(last + 1):
            for value in nodes[index].inputs:
                last_use[value] = index

        values = dict(self.net._inputs(x))
        taps = self.net.taps_by_node(taps)
        captured: dict[str, torch.Tensor] = {}
        wanted_set = set(wanted)
        for index in range(last + 1):
            node = nodes[index]
            device = self.node_devices[index]
            arguments = [values[name].to(device) for name in node.inputs]
            result = self.net.layers[index](*arguments)
            results = result if isinstance(result, tuple) else (result,)
            if taps and node.name in taps:
                results = (taps[node.name](results[0]), *results[1:])
            for name, value in zip(node.outputs, results):
                values[name] = value
            if node.name in wanted_set:
                captured[node.name] = results[0].to(self.output_device)
            for name in node.inputs:
                if last_use.get(name) == index:
                    values.pop(name, None)
        return {name: captured[name] for name in wanted}

    def forward(self, x: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the activation of the last node."""
        last = self.net.spec.nodes[-1].name
        return self.extract(x, [last])[last]


def place_model(net: nn.Module, devices: list[str] | str, split_at: list[int] | None = None, *,
                height: int = 512, width: int = 512, layer_names: Iterable[str] | None = None,
                output_device: str | None = None) -> nn.Module:
    """Return ``net`` spread over ``devices``, with ``.extract``, ``.layer_names``, ``.check_layers`` and
    ``.card`` like ``net``'s.

    ``net`` is a ``converters.network.GraphNet`` (its modules are moved, not copied). ``split_at`` lists
    the node index where each stage after the first begins. Without it, the split follows the memory
    estimate for a ``height`` x ``width`` input and ``layer_names`` (all layers when None), shared in
    proportion to each device's free memory. One device returns ``net`` moved to it.
    """
    devices = parse_devices(devices)
    for device in set(devices):
        check_device_available(device)
    node_count = len(net.spec.nodes)
    if len(devices) == 1:
        if split_at:
            raise OptionError(f"split {split_at} given for one device", hint="drop --split-at or add devices")
        return net.to(devices[0])
    if split_at is None:
        names = list(layer_names) if layer_names is not None else net.layer_names
        costs = node_memory(net, names, height, width)
        split_at = auto_split(costs, devices)
        logger.info("automatic split for %dx%d at node indices %s", width, height, split_at)
    split_at = check_split(split_at, node_count, len(devices))
    return PlacedModel(net, devices, split_at, output_device)


# --- memory estimates --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageEstimate:
    """Estimated memory of one stage, in bytes.

    ``saved_bytes`` are the tensors autograd keeps for the backward pass. ``gradient_bytes`` are the
    gradients in flight during it: twice the stage's largest activation, because the gradients of a
    node's output and of its input exist at the same time.
    """

    device: str
    start: int
    stop: int
    parameter_bytes: int
    saved_bytes: int
    gradient_bytes: int

    @property
    def total(self) -> int:
        return self.parameter_bytes + self.saved_bytes + self.gradient_bytes


@dataclass(frozen=True)
class NodeSizes:
    """Bytes of one node's outputs and of the tensors autograd saves when it runs (parameters excluded)."""

    output: int
    saved: int


def _tensor_bytes(value: torch.Tensor) -> int:
    return value.numel() * value.element_size()


def _node_sizes(net: nn.Module, last: int, height: int, width: int) -> list[NodeSizes]:
    """Return the sizes of nodes ``0..last`` for a [1, 3, height, width] float32 input that requires grad.

    Runs a copy of the layers on the meta device, which computes shapes (and what autograd saves) without
    memory. If an op cannot run there, runs the real layers at a small size and scales the sizes by the
    ratio of pixel counts, which is exact up to the rounding of strided layers.
    """
    try:
        return _run_sizes(copy.deepcopy(net.layers[: last + 1]).to("meta"), net, last, height, width, "meta")
    except (NotImplementedError, RuntimeError) as error:
        logger.debug("meta shape pass failed (%s); estimating from a small real run", error)
    small_h, small_w = min(height, FALLBACK_SIDE), min(width, FALLBACK_SIDE)
    sizes = _run_sizes(net.layers[: last + 1], net, last, small_h, small_w, "cpu")
    scale = (height * width) / (small_h * small_w)
    return [NodeSizes(int(size.output * scale), int(size.saved * scale)) for size in sizes]


def _run_sizes(layers: nn.Module, net: nn.Module, last: int, height: int, width: int, device: str) -> list[NodeSizes]:
    nodes = net.spec.nodes
    parameters = {id(parameter) for parameter in layers.parameters()}
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    values = {name: torch.zeros(1, 3, height, width, device=device, requires_grad=True) for name in net.input_names}
    sizes = []
    seen: set[int] = set()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        for index in range(last + 1):
            node = nodes[index]
            first_saved = len(saved)
            result = layers[index](*(values[name] for name in node.inputs))
            results = result if isinstance(result, tuple) else (result,)
            values.update(zip(node.outputs, results))
            # A tensor saved by two nodes (a ReLU's output, read again by the next convolution) is stored once.
            new = [tensor for tensor in saved[first_saved:] if id(tensor) not in parameters and id(tensor) not in seen]
            seen.update(id(tensor) for tensor in new)
            sizes.append(NodeSizes(sum(_tensor_bytes(value) for value in results), sum(_tensor_bytes(t) for t in new)))
    return sizes


def _deepest(net: nn.Module, layer_names: Iterable[str]) -> int:
    names = list(layer_names)
    net.check_layers(names)
    index_of = {name: index for index, name in enumerate(net.layer_names)}
    return max((index_of[name] for name in names), default=len(net.layer_names) - 1)


def _parameter_bytes(net: nn.Module) -> list[int]:
    return [sum(_tensor_bytes(p) for p in layer.parameters()) for layer in net.layers]


def node_memory(net: nn.Module, layer_names: Iterable[str], height: int, width: int) -> list[int]:
    """Return the estimated bytes of each node up to the deepest of ``layer_names``: its parameters, what
    autograd saves for it, and its output (a stand-in for its gradient)."""
    last = _deepest(net, layer_names)
    parameters = _parameter_bytes(net)
    return [parameters[index] + size.saved + size.output
            for index, size in enumerate(_node_sizes(net, last, height, width))]


def estimate_stages(net: nn.Module, layer_names: Iterable[str], height: int, width: int, devices: list[str] | str,
                    split_at: list[int] | None = None) -> list[StageEstimate]:
    """Return the estimated memory of each stage for a ``height`` x ``width`` input.

    Nodes after the deepest of ``layer_names`` never run, so they count only their parameters. The
    split is ``split_at`` or the automatic one of ``place_model``.
    """
    devices = parse_devices(devices)
    last = _deepest(net, layer_names)
    sizes = _node_sizes(net, last, height, width)
    parameters = _parameter_bytes(net)
    node_count = len(net.spec.nodes)
    if len(devices) == 1:
        split_at = []
    elif split_at is None:
        costs = [parameters[index] + size.saved + size.output for index, size in enumerate(sizes)]
        split_at = auto_split(costs, devices)
    else:
        split_at = check_split(split_at, node_count, len(devices))
    stages = []
    for (start, stop), device in zip(stage_ranges(split_at, node_count), devices):
        running = sizes[start:min(stop, last + 1)]
        stages.append(StageEstimate(
            device, start, stop, sum(parameters[start:stop]),
            sum(size.saved for size in running),
            2 * max((size.output for size in running), default=0),
        ))
    return stages


def estimate_memory(net: nn.Module, layer_names: Iterable[str], height: int, width: int, devices: list[str] | str,
                    split_at: list[int] | None = None) -> dict[str, int]:
    """Return the estimated bytes each device needs to stylize a ``height`` x ``width`` image.

    Counts parameters, the tensors autograd saves for the backward pass (the image included) and the
    gradients in flight, from a shape pass on the meta device. It does not count the optimiser's state
    (L-BFGS keeps 2 x history copies of the image), the style targets or the allocator's overhead. A
    device listed several times gets the sum of its stages.
    """
    totals: dict[str, int] = {}
    for stage in estimate_stages(net, layer_names, height, width, devices, split_at):
        totals[stage.device] = totals.get(stage.device, 0) + stage.total
    return totals


def _gib(value: int) -> str:
    """Format a byte count in GiB, or in MiB below 1 GiB."""
    if value < 2**30:
        return f"{value / 2**20:.1f} MiB"
    return f"{value / 2**30:.2f} GiB"


def format_estimate(net: nn.Module, layer_names: Iterable[str], height: int, width: int, devices: list[str] | str,
                    split_at: list[int] | None = None) -> str:
    """Return the ``--dry-run`` report: one line per stage (device, node range, memory) and one line per
    device comparing the estimate with its free memory."""
    devices = parse_devices(devices)
    stages = estimate_stages(net, layer_names, height, width, devices, split_at)
    names = net.layer_names
    lines = [f"memory estimate for a {width}x{height} image (parameters, tensors saved for backward, gradients):"]
    for stage in stages:
        lines.append(f"  {stage.device:<8} nodes {stage.start}-{stage.stop - 1} ({names[stage.start]} .. "
                     f"{names[stage.stop - 1]}): {_gib(stage.total)} (parameters {_gib(stage.parameter_bytes)}, "
                     f"saved {_gib(stage.saved_bytes)}, gradients {_gib(stage.gradient_bytes)})")
    if len(stages) > 1:
        lines.append(f"  split at node indices {','.join(str(stage.start) for stage in stages[1:])} "
                     "(pass them to --split-at to fix the split)")
    totals: dict[str, int] = {}
    for stage in stages:
        totals[stage.device] = totals.get(stage.device, 0) + stage.total
    for device, total in totals.items():
        free = free_memory(device)
        if not free:
            lines.append(f"  {device}: needs {_gib(total)}; free memory unknown")
        elif total > free:
            lines.append(f"  {device}: needs {_gib(total)}, only {_gib(free)} free: use a smaller size, "
                         "--tile, or more devices")
        else:
            lines.append(f"  {device}: needs {_gib(total)} of {_gib(free)} free")
    lines.append("  (an estimate: the optimiser's state and the style targets come on top)")
    return "\n".join(lines)
