"""The portable graph spec: what every converter writes and what ``GraphNet`` runs.

A converted model is two files in one folder:

- ``graph.json``: the nodes in execution order. Each node has a ``name`` (the layer name a user types,
  such as ``relu4_2``), an ``op`` from ``converters.ops``, the value names it reads (``inputs``) and
  writes (``outputs``), and plain JSON ``attrs``.
- ``weights.safetensors``: every tensor, keyed ``"{node name}.{parameter}"`` (``conv1_1.weight``).

Loading needs neither the converter that wrote the files nor pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from converters.errors import GraphSpecError

GRAPH_FORMAT = "nstzoo-graph"
GRAPH_VERSION = 1
GRAPH_FILE = "graph.json"
WEIGHTS_FILE = "weights.safetensors"


@dataclass
class Node:
    """One layer of the graph."""

    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "inputs": self.inputs, "outputs": self.outputs, "attrs": self.attrs}


@dataclass
class GraphSpec:
    """A network as a list of nodes in execution order, plus its named inputs and outputs.

    ``inputs`` maps each graph input's value name to its shape (N, C, H, W), with 0 for a free dimension.
    ``metadata`` carries provenance such as the source format and file hash.
    """

    nodes: list[Node]
    inputs: dict[str, list[int]]
    outputs: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    @property
    def node_names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": GRAPH_FORMAT,
            "version": GRAPH_VERSION,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "metadata": self.metadata,
            "nodes": [node.to_json() for node in self.nodes],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], path: str = GRAPH_FILE) -> "GraphSpec":
        if data.get("format") != GRAPH_FORMAT:
            raise GraphSpecError(f"{path}: not an nstzoo graph spec (format = {data.get('format')!r})")
        if data.get("version") != GRAPH_VERSION:
            raise GraphSpecError(
                f"{path}: graph spec version {data.get('version')!r} is not supported by this nstzoo "
                f"(expected {GRAPH_VERSION}); convert the model again with 'nstzoo convert'"
            )
        nodes = [Node(n["name"], n["op"], list(n["inputs"]), list(n["outputs"]), dict(n.get("attrs", {})))
                 for n in data["nodes"]]
        return cls(nodes, dict(data["inputs"]), list(data["outputs"]), dict(data.get("metadata", {})))

    def validate(self) -> None:
        """Check that names are unique and every input is produced before it is read."""
        seen_names: set[str] = set()
        available = set(self.inputs)
        for node in self.nodes:
            if node.name in seen_names:
                raise GraphSpecError(f"duplicate node name '{node.name}'")
            seen_names.add(node.name)
            missing = [value for value in node.inputs if value not in available]
            if missing:
                raise GraphSpecError(f"node '{node.name}' reads {missing}, which no earlier node writes")
            available.update(node.outputs)
        missing_outputs = [value for value in self.outputs if value not in available]
        if missing_outputs:
            raise GraphSpecError(f"graph outputs {missing_outputs} are not written by any node")


# safetensors dtype names; the format stores little-endian values, as torch does on every platform it runs on.
SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` in the safetensors format, streaming each tensor's bytes.

    ``safetensors.torch.save_file`` copies every tensor to a ``bytes`` object first. Writing the header and
    then each tensor's memory keeps the peak memory of a 500 MB conversion at the tensors themselves.
    """
    header: dict[str, object] = {"__metadata__": dict(metadata or {})}
    ordered = sorted(tensors.items())
    offset = 0
    for key, tensor in ordered:
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise GraphSpecError(f"tensor '{key}' has dtype {tensor.dtype}, which safetensors cannot store")
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data buffer starts 8-byte aligned
    with open(path, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for _, tensor in ordered:
            flat = tensor.detach().to("cpu").contiguous().reshape(-1)
            if flat.numel():
                handle.write(flat.view(torch.uint8).numpy().data)


def save_converted(folder: str | Path, spec: GraphSpec, weights: dict[str, torch.Tensor]) -> Path:
    """Write ``graph.json`` and ``weights.safetensors`` into ``folder`` atomically, and return the folder.

    Both files are written under temporary names and renamed into place, the spec last, so a reader that
    finds ``graph.json`` always finds complete weights beside it.
    """
    spec.validate()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights_tmp = folder / f".{WEIGHTS_FILE}.tmp"
    graph_tmp = folder / f".{GRAPH_FILE}.tmp"
    write_safetensors(weights_tmp, weights, metadata={"format": GRAPH_FORMAT})
    graph_tmp.write_text(json.dumps(spec.to_json(), indent=1), encoding="utf-8")
    weights_tmp.replace(folder / WEIGHTS_FILE)
    graph_tmp.replace(folder / GRAPH_FILE)
    return folder


def load_converted(folder: str | Path) -> tuple[GraphSpec, dict[str, torch.Tensor]]:
    """Read the spec and weights that ``save_converted`` wrote."""
    from safetensors.torch import load_file

    folder = Path(folder)
    graph_path = folder / GRAPH_FILE
    weights_path = folder / WEIGHTS_FILE
    if not graph_path.is_file() or not weights_path.is_file():
        raise GraphSpecError(
            f"{folder} contains no converted model (expected {GRAPH_FILE} and {WEIGHTS_FILE}); "
            "run 'nstzoo fetch NAME' or 'nstzoo convert' first"
        )
    try:
        data = json.loads(graph_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise GraphSpecError(f"{graph_path}: invalid JSON: {error}") from error
    spec = GraphSpec.from_json(data, str(graph_path))
    return spec, load_file(str(weights_path))
