"""``nstzoo convert SOURCE -o DIR [--verify]`` for Torch7, ONNX and PyTorch files.

--verify prints one relative error per compared layer; the bound checked here, 1e-4, is looser than the
converter tests' 1e-5 because the printed values are rounded to three digits.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from converters.graph import load_converted
from converters.torch7.writer import module, sequential, write_t7
from modelzoo.cli.main import main

sys.path.insert(0, str(Path(__file__).parent))
from test_register import write_onnx, write_pytorch  # noqa: E402

pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")

ERROR_LINE = re.compile(r"^\s+(\S+)\s+(\S+)\s+\[[\d, ]+\]\s+([0-9.e+-]+)$", re.MULTILINE)


def write_torch7(path: Path) -> Path:
    rng = np.random.default_rng(0)
    return write_t7(path, sequential("nn.Sequential", [
        module("nn.SpatialConvolution", nInputPlane=3, nOutputPlane=4, kH=3, kW=3, dH=1, dW=1, padH=1, padW=1,
               weight=rng.standard_normal((4, 3, 3, 3)).astype(np.float32), bias=rng.standard_normal(4).astype(np.float32)),
        module("nn.ReLU", threshold=0, val=0),
        module("nn.SpatialMaxPooling", kH=3, kW=3, dH=2, dW=2, padH=0, padW=0, ceil_mode=True),
        module("nn.SpatialReflectionPadding", pad_l=1, pad_r=1, pad_t=1, pad_b=1),
    ]))


@pytest.mark.parametrize("fmt", ["torch7", "onnx"])
def test_convert_and_verify(fmt: str, tmp_path: Path, capsys) -> None:
    source = write_torch7(tmp_path / "net.t7") if fmt == "torch7" else write_onnx(tmp_path / "net.onnx")
    output = tmp_path / "converted"
    main(["convert", str(source), "-o", str(output), "--verify"])
    printed = capsys.readouterr().out
    assert f"format: {fmt}" in printed
    spec, weights = load_converted(output)
    errors = {layer: float(error) for layer, _, error in ERROR_LINE.findall(printed)}
    assert set(errors) == set(spec.node_names)
    assert max(errors.values()) < 1e-4
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())


def test_convert_pytorch_has_no_reference(tmp_path: Path, capsys) -> None:
    main(["convert", str(write_pytorch(tmp_path / "net.pth")), "-o", str(tmp_path / "out"), "--verify"])
    printed = capsys.readouterr().out
    assert "layers: conv1_1, relu1_1, conv1_2" in printed
    assert "has no independent reference" in printed


def test_convert_unknown_content_asks_for_format(tmp_path: Path, capsys) -> None:
    source = tmp_path / "mystery.bin"
    source.write_bytes(b"\x00\x01\x02\x03 definitely not a model")
    with pytest.raises(SystemExit) as exited:
        main(["convert", str(source), "-o", str(tmp_path / "out")])
    assert exited.value.code == 1
    assert "pass --format" in capsys.readouterr().err
