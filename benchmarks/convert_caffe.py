"""Benchmark: convert a VGG-19-shaped caffemodel (about 575 MB, random weights) with nstzoo and with OpenCV.

Writes the caffemodel once, in the V1 ``layers`` format with 4-D blobs that the published VGG-19 file uses.
Then it runs each reader in its own subprocess, three times in turn. It prints the median wall time of the
work (imports excluded) and the median extra peak memory: the peak resident set (VmHWM) minus the resident
set after the imports. nstzoo's work is ``convert_caffe`` plus writing the safetensors and graph spec; OpenCV's is
``cv2.dnn.readNetFromCaffe``. Goals: time at most 1.0x OpenCV, extra peak memory at most 1.2x the file size.

    python benchmarks/convert_caffe.py [--workdir DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# VGG-19 (configuration E): (name, output channels) per convolution, "pool" between blocks.
VGG19_LAYOUT = [
    ("conv1_1", 64), ("conv1_2", 64), "pool",
    ("conv2_1", 128), ("conv2_2", 128), "pool",
    ("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256), ("conv3_4", 256), "pool",
    ("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512), ("conv4_4", 512), "pool",
    ("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512), ("conv5_4", 512), "pool",
]


def vgg19_prototxt() -> str:
    """Return a V1 deploy prototxt with VGG-19's layers and names."""
    lines = ['name: "VGG_ILSVRC_19_layers"', 'input: "data"'] + [f"input_dim: {dim}" for dim in (1, 3, 224, 224)]
    bottom, block = "data", 1
    for entry in VGG19_LAYOUT:
        if entry == "pool":
            name = f"pool{block}"
            lines.append(f'layers {{ bottom: "{bottom}" top: "{name}" name: "{name}" type: POOLING '
                         "pooling_param { pool: MAX kernel_size: 2 stride: 2 } }")
            bottom, block = name, block + 1
            continue
        name, outputs = entry
        relu = name.replace("conv", "relu")
        lines.append(f'layers {{ bottom: "{bottom}" top: "{name}" name: "{name}" type: CONVOLUTION '
                     f"convolution_param {{ num_output: {outputs} pad: 1 kernel_size: 3 }} }}")
        lines.append(f'layers {{ bottom: "{name}" top: "{name}" name: "{relu}" type: RELU }}')
        bottom = name
    for index, (name, outputs) in enumerate((("fc6", 4096), ("fc7", 4096), ("fc8", 1000))):
        lines.append(f'layers {{ bottom: "{bottom}" top: "{name}" name: "{name}" type: INNER_PRODUCT '
                     f"inner_product_param {{ num_output: {outputs} }} }}")
        bottom = name
        if index < 2:
            lines.append(f'layers {{ bottom: "{name}" top: "{name}" name: "relu{6 + index}" type: RELU }}')
            lines.append(f'layers {{ bottom: "{name}" top: "{name}" name: "drop{6 + index}" type: DROPOUT '
                         "dropout_param { dropout_ratio: 0.5 } }")
    lines.append(f'layers {{ bottom: "{bottom}" top: "prob" name: "prob" type: SOFTMAX }}')
    return "\n".join(lines) + "\n"


def vgg19_blobs(seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Return random weights in VGG-19's shapes (143.7 million floats)."""
    rng = np.random.default_rng(seed)
    blobs: dict[str, list[np.ndarray]] = {}
    channels = 3
    for entry in VGG19_LAYOUT:
        if entry == "pool":
            continue
        name, outputs = entry
        blobs[name] = [rng.standard_normal((outputs, channels, 3, 3), dtype=np.float32) * 0.05,
                       rng.standard_normal(outputs, dtype=np.float32) * 0.05]
        channels = outputs
    for name, outputs, inputs in (("fc6", 4096, 512 * 7 * 7), ("fc7", 4096, 4096), ("fc8", 1000, 4096)):
        blobs[name] = [rng.standard_normal((outputs, inputs), dtype=np.float32) * 0.01,
                       rng.standard_normal(outputs, dtype=np.float32) * 0.01]
    return blobs


def write_model(folder: Path) -> tuple[Path, Path]:
    from converters.caffe.writer import write_caffemodel

    prototxt = folder / "VGG_ILSVRC_19_layers_deploy.prototxt"
    caffemodel = folder / "VGG_ILSVRC_19_layers.caffemodel"
    text = vgg19_prototxt()
    prototxt.write_text(text)
    if not caffemodel.is_file():
        started = time.perf_counter()
        write_caffemodel(caffemodel, text, vgg19_blobs())
        print(f"wrote {caffemodel} ({caffemodel.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s")
    return caffemodel, prototxt


# Each child prints one JSON line: work seconds, resident set after imports, peak resident set (bytes).
CHILD_PRELUDE = """
import json, sys, time
def status(field):
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'):
            return int(line.split()[1]) * 1024
"""

NSTZOO_CHILD = CHILD_PRELUDE + """
sys.path.insert(0, {repo!r})
from converters.caffe import convert_caffe
from converters.formats import ConvertOptions
from converters.graph import save_converted
import torch
baseline = status('VmRSS')
started = time.perf_counter()
spec, weights = convert_caffe({caffemodel!r}, ConvertOptions(prototxt={prototxt!r}))
save_converted({output!r}, spec, weights)
elapsed = time.perf_counter() - started
print(json.dumps({{"seconds": elapsed, "baseline": baseline, "peak": status('VmHWM')}}))
"""

OPENCV_CHILD = CHILD_PRELUDE + """
import cv2
baseline = status('VmRSS')
started = time.perf_counter()
net = cv2.dnn.readNetFromCaffe({prototxt!r}, {caffemodel!r})
elapsed = time.perf_counter() - started
assert not net.empty()
print(json.dumps({{"seconds": elapsed, "baseline": baseline, "peak": status('VmHWM')}}))
"""


def run_child(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "nstzoo-bench-caffe",
                        help="folder for the 575 MB caffemodel (kept between runs) and the converted output")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each reader (default 3)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    caffemodel, prototxt = write_model(args.workdir)
    size = caffemodel.stat().st_size
    output = args.workdir / "converted"

    children = {
        "nstzoo": NSTZOO_CHILD.format(repo=str(REPO), caffemodel=str(caffemodel), prototxt=str(prototxt), output=str(output)),
        "opencv": OPENCV_CHILD.format(caffemodel=str(caffemodel), prototxt=str(prototxt)),
    }
    results: dict[str, list[dict]] = {name: [] for name in children}
    for repeat in range(args.repeats):
        for name, code in children.items():  # alternate, so drift on a shared machine hits both
            measurement = run_child(code)
            results[name].append(measurement)
            extra = measurement["peak"] - measurement["baseline"]
            print(f"run {repeat + 1} {name}: {measurement['seconds']:.2f} s, extra peak {extra / 1e6:.0f} MB")

    medians = {}
    for name, runs in results.items():
        medians[name] = {
            "seconds": statistics.median(run["seconds"] for run in runs),
            "extra": statistics.median(run["peak"] - run["baseline"] for run in runs),
        }
    print(f"\ncaffemodel: {size / 1e6:.1f} MB, medians of {args.repeats} runs")
    for name, median in medians.items():
        print(f"{name:>7}: {median['seconds']:.2f} s, extra peak memory {median['extra'] / 1e6:.0f} MB "
              f"({median['extra'] / size:.2f}x file size)")
    ratio = medians["nstzoo"]["seconds"] / medians["opencv"]["seconds"]
    print(f"time ratio nstzoo / OpenCV: {ratio:.2f} (goal <= 1.0)")
    print(f"nstzoo extra peak / file size: {medians['nstzoo']['extra'] / size:.2f} (goal <= 1.2)")


if __name__ == "__main__":
    main()
