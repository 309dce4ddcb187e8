"""``nstzoo stylize``: flags reach the options, files are written, errors are one clear line."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from modelzoo.cli.main import app
from test_engine_support import CONTENT_PHOTO, GREAT_WAVE, VAN_GOGH, save_tiny_vgg

TINY_FLAGS = ["--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1,relu3_1", "-s", "32"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A converted model folder (graph.json + weights.safetensors) of the small VGG-shaped test network."""
    return save_tiny_vgg(tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def invoke(*args: str):
    return CliRunner().invoke(app, ["stylize", *map(str, args)])


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m modelzoo`` in a real process, as a user would."""
    return subprocess.run([sys.executable, "-m", "modelzoo", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_every_flag_reaches_options(tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (8, 8)).save(init)
    result = invoke(
        CONTENT_PHOTO, VAN_GOGH, GREAT_WAVE, "--show-options", "-o", tmp_path / "x.png",
        "--model", "vgg19", "--content-layers", "relu4_2", "--style-layers", "relu1_1,relu2_1",
        "--style-layer-weights", "1e0,5e-1", "--style-blend-weights", "3,7", "--content-weight", "5e0",
        "--style-weight", "1e2", "--tv-weight", "1e-3", "--tv-form", "l1", "--image-size", "1e3",
        "--style-scale", "5e-1", "--pixel-scale", "256", "--init", init, "--optimizer", "adam",
        "--iterations", "2e2", "--lbfgs-history", "1e1", "--learning-rate", "1e0", "--pooling", "avg",
        "--normalize-gradients", "--gradient-norm", "l2", "--normalize-weights", "--original-colors",
        "--color-transfer", "histogram", "--seed", "7", "--precision", "bfloat16", "--print-every", "1e1", "--save-every", "2e1",
        "--device", "cpu", "--no-cudnn", "--cudnn-autotune", "--scales", "250,500,1000",
        "--iterations-per-scale", "3e2,2e2,1e2", "--tile", "512", "--tile-overlap", "32",
        "--devices", "cpu,cpu", "--split-at", "4",
    )
    assert result.exit_code == 0, result.output
    options = json.loads(result.output)
    expected = {
        "model": "vgg19", "content_layers": ["relu4_2"], "style_layers": ["relu1_1", "relu2_1"],
        "style_layer_weights": [1.0, 0.5], "style_blend_weights": [3.0, 7.0], "content_weight": 5.0,
        "style_weight": 100.0, "tv_weight": 0.001, "tv_form": "l1", "image_size": 1000, "style_scale": 0.5,
        "pixel_scale": 256.0, "init": str(init), "optimizer": "adam", "iterations": 200, "lbfgs_history": 10,
        "learning_rate": 1.0, "pooling": "avg", "normalize_gradients": True, "gradient_norm": "l2",
        "normalize_weights": True, "original_colors": True, "color_transfer": "histogram", "seed": 7, "precision": "bfloat16",
        "print_every": 10, "save_every": 20, "device": "cpu", "cudnn": False, "cudnn_autotune": True,
        "scales": [250, 500, 1000], "iterations_per_scale": [300, 200, 100], "tile": 512, "tile_overlap": 32,
        "devices": ["cpu", "cpu"], "split_at": [4],
    }
    for name, value in expected.items():
        assert options[name] == value, name


def test_scale_start_and_steps():
    result = invoke(CONTENT_PHOTO, VAN_GOGH, "--show-options", "--image-size", "1024", "--scale-start", "256",
                    "--scale-steps", "3")
    assert json.loads(result.output)["scales"] == [256, 512, 1024]


def test_defaults_documented():
    options = json.loads(invoke(CONTENT_PHOTO, VAN_GOGH, "--show-options").output)
    assert options["model"] == "open_nsfw"
    assert (options["init"], options["optimizer"], options["iterations"], options["image_size"]) == ("image", "lbfgs", 1000, 512)
    assert options["content_weight"] is None  # None: from the model's card


def test_writes_output_snapshots_and_history(tmp_path, tiny_model):
    output = tmp_path / "out.png"
    result = invoke(CONTENT_PHOTO, VAN_GOGH, "-o", output, "--model", tiny_model, *TINY_FLAGS,
                    "-n", "4", "--save-every", "2", "--print-every", "2")
    assert result.exit_code == 0, result.output
    assert Image.open(output).size == (32, 32)
    assert (tmp_path / "out_2.png").is_file()
    assert (tmp_path / "out_4.png").is_file()
    with open(tmp_path / "out_losses.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["iteration"] for row in rows] == ["1", "2", "3", "4"]
    assert float(rows[-1]["total"]) > 0
    assert "iteration 2/4" in result.output


def test_multiscale_tiff_output(tmp_path, tiny_model):
    output = tmp_path / "out.tif"
    result = invoke(CONTENT_PHOTO, VAN_GOGH, "-o", output, "--model", tiny_model, *TINY_FLAGS,
                    "--scales", "16,32", "--iterations-per-scale", "2", "--save-every", "2")
    assert result.exit_code == 0, result.output
    import tifffile

    assert tifffile.imread(output).dtype.name == "uint16"
    assert (tmp_path / "out_s1_2.tif").is_file()
    assert (tmp_path / "out_s2_2.tif").is_file()


def test_dry_run_prints_estimate(tiny_model):
    result = invoke(CONTENT_PHOTO, VAN_GOGH, "--model", tiny_model, *TINY_FLAGS, "--dry-run",
                    "--devices", "cpu,cpu", "--split-at", "3")
    assert result.exit_code == 0, result.output
    assert "memory estimate" in result.output


def test_unknown_layer_one_line_error(tiny_model, tmp_path):
    result = run_cli("stylize", CONTENT_PHOTO, VAN_GOGH, "-o", tmp_path / "out.png", "--model", tiny_model,
                     "--content-layers", "relu9_9", "-n", "1", "-s", "32")
    assert result.returncode == 1
    assert "relu9_9" in result.stderr
    assert "valid layers" in result.stderr
    assert "relu1_1" in result.stderr
    assert "pool3" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.png").exists()


def run_main(capsys, *args: str) -> tuple[int, str]:
    """Run the CLI's ``main`` in this process and return (exit status, stderr)."""
    from modelzoo.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(["stylize", *map(str, args)])
    return exited.value.code, capsys.readouterr().err


def test_bad_number_one_line_error(tiny_model, capsys):
    status, stderr = run_main(capsys, CONTENT_PHOTO, VAN_GOGH, "--model", tiny_model, "--style-weight", "lots")
    assert status == 1
    assert "'lots'" in stderr
    assert "--style-weight" in stderr


def test_unreadable_image_named(tiny_model, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    status, stderr = run_main(capsys, broken, VAN_GOGH, "--model", tiny_model, *TINY_FLAGS, "-n", "1")
    assert status == 1
    assert "broken.jpg" in stderr
    assert "Traceback" not in stderr
