"""``GraphNet``: a ``torch.nn.Module`` that runs a graph spec and returns named activations."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from converters import ops
from converters.errors import GraphSpecError, UnknownLayerError
from converters.graph import GraphSpec, load_converted

# Modules that register more ops on import.
for _module in ("converters.ops_caffe", "converters.ops_torch7", "converters.ops_onnx"):
    try:
        __import__(_module)
    except ModuleNotFoundError as error:  # a module that is not written yet registers nothing
        if error.name != _module:
            raise


class GraphNet(nn.Module):
    """A network built from a ``GraphSpec``; ``extract`` returns the outputs of named layers.

    A layer's activation is the first output of the node with that name, as that node produced it: ops
    never work in place, so a later node cannot change a captured value.
    """

    def __init__(self, spec: GraphSpec, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        spec.validate()
        self.spec = spec
        self.layers = nn.ModuleList()
        for node in spec.nodes:
            prefix = f"{node.name}."
            node_weights = {key[len(prefix):]: value for key, value in weights.items() if key.startswith(prefix)}
            self.layers.append(ops.build_module(node.op, node.attrs, node_weights, node.name))
        self._index = {node.name: index for index, node in enumerate(spec.nodes)}
        # User-facing layer names that differ from node names (a model card's layer map).
        self.aliases: dict[str, str] = {}
        self.card = None
        self.eval()

    @classmethod
    def from_folder(cls, folder: str | Path) -> "GraphNet":
        """Load a converted model written by ``converters.graph.save_converted``."""
        spec, weights = load_converted(folder)
        return cls(spec, weights)

    @property
    def layer_names(self) -> list[str]:
        """Return the node names in execution order."""
        return self.spec.node_names

    @property
    def input_names(self) -> list[str]:
        return list(self.spec.inputs)

    def node_for(self, name: str) -> str:
        """Return the node that computes layer ``name`` (through ``aliases``)."""
        return self.aliases.get(name, name)

    def check_layers(self, names: Iterable[str]) -> None:
        """Raise ``UnknownLayerError`` listing the valid names if any of ``names`` is not a layer."""
        unknown = [name for name in names if self.node_for(name) not in self._index]
        if unknown:
            model = self.card.name if self.card is not None else ""
            raise UnknownLayerError(unknown, self.layer_names, model)

    def _run(self, inputs: dict[str, torch.Tensor], requested: list[str], stop_after: int | None,
             taps: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
        """Run nodes in order up to ``stop_after``, keeping each value only while a later node needs it.

        ``taps`` maps node names to functions applied to that node's first output; later nodes read the result.
        """
        nodes = self.spec.nodes
        last = len(nodes) - 1 if stop_after is None else stop_after
        last_use: dict[str, int] = {}
        for index in range(last + 1):
            for value in nodes[index].inputs:
                last_use[value] = index
        requested_nodes = set(requested)
        values: dict[str, torch.Tensor] = dict(inputs)
        captured: dict[str, torch.Tensor] = {}
        for index in range(last + 1):
            node = nodes[index]
            result = self.layers[index](*(values[name] for name in node.inputs))
            results = result if isinstance(result, tuple) else (result,)
            if len(results) != len(node.outputs):
                raise GraphSpecError(f"node '{node.name}' returned {len(results)} outputs, the spec lists {len(node.outputs)}")
            if taps and node.name in taps:
                results = (taps[node.name](results[0]), *results[1:])
            values.update(zip(node.outputs, results))
            if node.name in requested_nodes:
                captured[node.name] = results[0]
            for name in node.inputs:
                if last_use.get(name) == index and name not in self.spec.outputs:
                    values.pop(name, None)
        return captured

    def _inputs(self, x: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if isinstance(x, dict):
            return x
        names = self.input_names
        if len(names) != 1:
            raise GraphSpecError(f"this network has {len(names)} inputs ({names}); pass a dict of tensors")
        return {names[0]: x}

    supports_taps = True

    def extract(self, x: torch.Tensor | dict[str, torch.Tensor], layer_names: Iterable[str],
                taps: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
        """Return the activations of ``layer_names`` for input ``x`` in the network's own input space.

        Only the nodes up to the deepest requested layer run. ``taps`` maps layer names to functions applied
        to that layer's activation as it is computed (the engine's loss taps); the result is what later
        layers read and what is returned.
        """
        requested = list(dict.fromkeys(layer_names))
        self.check_layers(requested)
        if not requested:
            return {}
        node_names = list(dict.fromkeys(self.node_for(name) for name in requested))
        deepest = max(self._index[name] for name in node_names)
        captured = self._run(self._inputs(x), node_names, deepest, self.taps_by_node(taps))
        return {name: captured[self.node_for(name)] for name in requested}

    def taps_by_node(self, taps: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None):
        """Return ``taps`` keyed by node name; two layer names of one node get both their taps, in order."""
        if not taps:
            return None
        self.check_layers(list(taps))
        by_node: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]] = {}
        for name, function in taps.items():
            by_node.setdefault(self.node_for(name), []).append(function)
        return {node: chain_taps(functions) for node, functions in by_node.items()}

    def forward(self, x: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the whole graph and return its output (a tuple if it has several)."""
        run = self._run_values(self._inputs(x))
        result = [run[name] for name in self.spec.outputs]
        return result[0] if len(result) == 1 else tuple(result)

    def _run_values(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        values: dict[str, torch.Tensor] = dict(inputs)
        for index, node in enumerate(self.spec.nodes):
            result = self.layers[index](*(values[name] for name in node.inputs))
            results = result if isinstance(result, tuple) else (result,)
            values.update(zip(node.outputs, results))
        return values


def chain_taps(functions: list[Callable[[torch.Tensor], torch.Tensor]]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return one tap that applies ``functions`` in order (the function itself when there is one)."""
    if len(functions) == 1:
        return functions[0]

    def chained(value: torch.Tensor) -> torch.Tensor:
        for function in functions:
            value = function(value)
        return value

    return chained
