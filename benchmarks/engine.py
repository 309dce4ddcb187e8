"""Benchmark the style engine against PyPI's neural-style 0.5.7 on the same VGG-19-shaped random weights.

Both programs get the same weights, images, sizes, layers, loss weights and L-BFGS settings (history 100,
no line search, no tolerance stop), each in its own process:

- seconds per iteration at each size (median of the per-iteration times after the first iteration),
- peak RSS of the whole process (``ru_maxrss`` from ``os.wait4``),
- wall time, from process start, until the total loss reaches neural-style's loss after
  ``--reference-iterations`` iterations (500 by default) at the first size.

neural-style runs in its own virtual environment with torch==2.14.1, torchvision==0.29.1 and
neural-style==0.5.7, created on first use under ``--venv`` (pip resolves the packages through its own
configuration). nstzoo uses neural-style 0.5.7's conventions for the comparison: pixels x 256, the L1 TV
term, random init (randn x 0.001). The equal-loss race also runs nstzoo's own ways to get there sooner:
init from the content image, and a half-size first scale. nstzoo runs with its default precision ("auto":
bfloat16 activations on CPUs with AVX-512 BF16 or AMX) and, for comparison, in float32 throughout.

Run: python benchmarks/engine.py [--sizes 256,512] [--timing-iterations 10] [--reference-iterations 500]
The shared machine is noisy: timings repeat ``--repeats`` times and the medians and ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VENV = Path.home() / ".cache" / "nstzoo-bench" / "ns057"
REFERENCE_PACKAGES = ["torch==2.14.1", "torchvision==0.29.1", "neural-style==0.5.7"]
VGG19_CHANNELS = [64, 64, "P", 128, 128, "P", 256, 256, 256, 256, "P", 512, 512, 512, 512, "P", 512, 512, 512, 512, "P"]
VGG_MEAN_BGR = (103.939, 116.779, 123.68)
CONTENT_LAYERS = "relu4_2"
STYLE_LAYERS = "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1"
WEIGHTS = {"content": 5.0, "style": 100.0, "tv": 1e-3}  # neural-style's defaults
ITERATION_LINE = re.compile(r"^Iteration (\d+) / \d+")
TOTAL_LINE = re.compile(r"^\s*Total loss: ([0-9.eE+-]+)")


# --- set-up ------------------------------------------------------------------------------------------


def ensure_reference_venv(venv: Path) -> Path:
    """Create the neural-style venv if it lacks the ``neural-style`` script, and return that script."""
    script = venv / "bin" / "neural-style"
    if script.is_file():
        return script
    print(f"creating {venv} with {' '.join(REFERENCE_PACKAGES)} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *REFERENCE_PACKAGES], check=True)
    return script


def vgg19_layer_names() -> list[tuple[str, str]]:
    """Return (kind, name) for each entry of neural-style's VGG-19 ``features`` Sequential, in order."""
    entries, block, index, pool = [], 1, 1, 1
    for channels in VGG19_CHANNELS:
        if channels == "P":
            entries.append(("pool", f"pool{pool}"))
            pool, block, index = pool + 1, block + 1, 1
            continue
        entries.append(("conv", f"conv{block}_{index}"))
        entries.append(("relu", f"relu{block}_{index}"))
        index += 1
    return entries


def write_weights(folder: Path) -> tuple[Path, Path]:
    """Write He-initialised VGG-19 conv weights (seed 0) as neural-style's .pth and as an nstzoo graph."""
    import torch

    from converters.graph import GraphSpec, Node, save_converted

    generator = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    nodes: list[Node] = []
    weights: dict[str, torch.Tensor] = {}
    previous, channels_in, conv_index = "input", 3, 0
    sequential_index = 0
    for kind, name in vgg19_layer_names():
        if kind == "conv":
            channels_out = [c for c in VGG19_CHANNELS if c != "P"][conv_index]
            weight = torch.randn(channels_out, channels_in, 3, 3, generator=generator) * (2.0 / (channels_in * 9)) ** 0.5
            bias = torch.zeros(channels_out)
            state[f"features.{sequential_index}.weight"] = weight
            state[f"features.{sequential_index}.bias"] = bias
            weights[f"{name}.weight"], weights[f"{name}.bias"] = weight, bias
            nodes.append(Node(name, "conv2d", [previous], [name], {"padding": 1}))
            channels_in, conv_index = channels_out, conv_index + 1
        elif kind == "relu":
            nodes.append(Node(name, "relu", [previous], [name]))
        else:
            nodes.append(Node(name, "pool2d", [previous], [name], {"mode": "max", "kernel": 2, "stride": 2}))
        previous = name
        sequential_index += 1
    pth = folder / "vgg19-random-bench.pth"  # neural-style picks the architecture from "vgg" and "19"
    torch.save(state, pth)
    graph = save_converted(folder / "nstzoo-vgg19", GraphSpec(nodes, {"input": [1, 3, 0, 0]}, [previous]), weights)
    return pth, graph


def write_images(folder: Path, size: int) -> tuple[Path, Path]:
    """Write the content photo and the style painting resized so their longest side is ``size``."""
    from PIL import Image

    examples = REPO / "modelzoo" / "examples"
    paths = []
    for name, source in (("content", examples / "astronaut.jpg"), ("style", examples / "van_gogh_auvers.jpg")):
        image = Image.open(source).convert("RGB")
        factor = size / max(image.size)
        image = image.resize((round(image.width * factor), round(image.height * factor)), Image.LANCZOS)
        path = folder / f"{name}_{size}.png"
        image.save(path)
        paths.append(path)
    return paths[0], paths[1]


# --- runs --------------------------------------------------------------------------------------------


def run_process(command: list[str], line_parser, env: dict | None = None) -> tuple[list[tuple[float, int, float]], int]:
    """Run ``command`` and return ((seconds since start, iteration, total loss) per iteration, peak RSS bytes)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                               env={**os.environ, **(env or {})})
    records: list[tuple[float, int, float]] = []
    output: list[str] = []
    state = {"iteration": None}
    for line in process.stdout:  # type: ignore[union-attr]
        output.append(line)
        record = line_parser(line, state, time.perf_counter() - started)
        if record is not None:
            records.append(record)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise RuntimeError(f"{command[0]} failed:\n{''.join(output[-30:])}")
    return records, usage.ru_maxrss * 1024


def parse_neural_style(line: str, state: dict, now: float):
    match = ITERATION_LINE.match(line)
    if match:
        state["iteration"] = int(match.group(1))
        state["time"] = now
        return None
    match = TOTAL_LINE.match(line)
    if match and state["iteration"] is not None:
        return state["time"], state["iteration"], float(match.group(1))
    return None


def parse_nstzoo(line: str, state: dict, now: float):
    """Parse the child's "ITER LAST_SCALE ITERATION TOTAL" lines; earlier scales' losses are not comparable."""
    if line.startswith("ITER "):
        _, last_scale, iteration, total = line.split()
        return (now, int(iteration), float(total)) if last_scale == "1" else None
    return None


def neural_style_command(script: Path, pth: Path, content: Path, style: Path, size: int, iterations: int,
                         output: Path, threads: int) -> list[str]:
    return [str(script), "-content_image", str(content), "-style_image", str(style), "-image_size", str(size),
            "-gpu", "c", "-backend", "nn", "-model_file", str(pth), "-disable_check", "-num_iterations", str(iterations),
            "-print_iter", "1", "-save_iter", "0", "-init", "random", "-seed", "0", "-optimizer", "lbfgs",
            "-content_weight", str(WEIGHTS["content"]), "-style_weight", str(WEIGHTS["style"]),
            "-tv_weight", str(WEIGHTS["tv"]), "-content_layers", CONTENT_LAYERS, "-style_layers", STYLE_LAYERS,
            "-output_image", str(output)]


def nstzoo_command(graph: Path, content: Path, style: Path, size: int, iterations: int, threads: int,
                   init: str = "random", scales: tuple[int, ...] = (), stop_below: float | None = None,
                   precision: str = "auto") -> list[str]:
    job = {"graph": str(graph), "content": str(content), "style": str(style), "size": size, "iterations": iterations,
           "threads": threads, "init": init, "scales": list(scales), "stop_below": stop_below, "precision": precision}
    return [sys.executable, str(Path(__file__).resolve()), "--nstzoo-job", json.dumps(job)]


def nstzoo_job(job: dict) -> None:
    """Child process: run nstzoo with neural-style 0.5.7's conventions and print one line per iteration."""
    import torch

    torch.set_num_threads(job["threads"])
    sys.path.insert(0, str(REPO))
    from converters.network import GraphNet
    from modelzoo.engine import Contract, stylize

    net = GraphNet.from_folder(job["graph"])
    contract = Contract("BGR", 256.0, VGG_MEAN_BGR)

    def report(event):
        last_scale = event.scale_index == event.scale_count - 1
        print(f"ITER {int(last_scale)} {event.iteration} {event.losses['total']!r}", flush=True)
        if job["stop_below"] is not None and last_scale and event.losses["total"] <= job["stop_below"]:
            return False
        return None

    scales = tuple(job["scales"])
    stylize(job["content"], job["style"], model=net, contract=contract, image_size=job["size"],
            iterations=job["iterations"], init=job["init"], seed=0, scales=scales,
            content_layers=tuple(CONTENT_LAYERS.split(",")), style_layers=tuple(STYLE_LAYERS.split(",")),
            content_weight=WEIGHTS["content"], style_weight=WEIGHTS["style"], tv_weight=WEIGHTS["tv"],
            tv_form="l1", pixel_scale=256.0, lbfgs_history=100, optimizer="lbfgs", print_every=0,
            precision=job["precision"], callback=report)


# --- measurements ------------------------------------------------------------------------------------


def seconds_per_iteration(records: list[tuple[float, int, float]]) -> float:
    """Median time between consecutive iterations, skipping the first (it includes warm-up)."""
    times = [record[0] for record in records]
    steps = [later - earlier for earlier, later in zip(times[1:], times[2:])]
    return statistics.median(steps)


def time_to_loss(records: list[tuple[float, int, float]], target: float) -> float | None:
    for seconds, _, total in records:
        if total <= target:
            return seconds
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--timing-iterations", type=int, default=10)
    parser.add_argument("--reference-iterations", type=int, default=500, help="0 skips the equal-loss race")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--nstzoo-job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.nstzoo_job:
        nstzoo_job(json.loads(args.nstzoo_job))
        return

    script = ensure_reference_venv(args.venv)
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    sizes = [int(size) for size in args.sizes.split(",")]
    sys.path.insert(0, str(REPO))
    from modelzoo.engine.precision import resolve_precision

    default_precision = resolve_precision("auto", "cpu")
    default_label = f"nstzoo default ({default_precision})"
    with tempfile.TemporaryDirectory(prefix="nstzoo-bench-") as temp:
        folder = Path(temp)
        pth, graph = write_weights(folder)
        print(f"threads {args.threads}; timing {args.timing_iterations} iterations x {args.repeats} repeats", flush=True)
        for size in sizes:
            content, style = write_images(folder, size)
            programs = {
                "neural-style": lambda: (neural_style_command(script, pth, content, style, size, args.timing_iterations,
                                                              folder / "ns.png", args.threads), parse_neural_style),
                default_label: lambda: (nstzoo_command(graph, content, style, size, args.timing_iterations, args.threads),
                                        parse_nstzoo),
                "nstzoo float32": lambda: (nstzoo_command(graph, content, style, size, args.timing_iterations,
                                                          args.threads, precision="float32"), parse_nstzoo),
            }
            speeds: dict[str, list[float]] = {name: [] for name in programs}
            peaks: dict[str, list[int]] = {name: [] for name in programs}
            first_losses: dict[str, float] = {}
            for _ in range(args.repeats):
                for name, make in programs.items():
                    command, parser_function = make()
                    records, rss = run_process(command, parser_function, env)
                    speeds[name].append(seconds_per_iteration(records))
                    peaks[name].append(rss)
                    first_losses[name] = records[0][2]
            print(f"{size} px: loss at iteration 1 (same definitions: equal in float32, close in bfloat16): "
                  + ", ".join(f"{name} {value:.6g}" for name, value in first_losses.items()), flush=True)
            ns_speed, ns_rss = statistics.median(speeds["neural-style"]), statistics.median(peaks["neural-style"])
            for name in (default_label, "nstzoo float32"):
                speed, rss = statistics.median(speeds[name]), statistics.median(peaks[name])
                print(f"{size} px: s/iteration neural-style {ns_speed:.3f}, {name} {speed:.3f}, ratio {speed / ns_speed:.2f} "
                      f"(goal <= 0.67); peak RSS neural-style {ns_rss / 2**20:.0f} MiB, {name} {rss / 2**20:.0f} MiB, "
                      f"ratio {rss / ns_rss:.2f} (goal <= 0.75)", flush=True)

        if args.reference_iterations <= 0:
            return
        size = sizes[0]
        content, style = write_images(folder, size)
        reference, _ = run_process(neural_style_command(script, pth, content, style, size, args.reference_iterations,
                                                        folder / "ns.png", args.threads), parse_neural_style, env)
        target = reference[-1][2]
        reference_time = reference[-1][0]
        print(f"equal loss at {size} px: neural-style reaches {target:.6g} after {reference[-1][1]} iterations in "
              f"{reference_time:.1f} s", flush=True)
        races = {
            f"default ({default_precision}), init from content": nstzoo_command(
                graph, content, style, size, args.reference_iterations, args.threads, init="image", stop_below=target),
            f"{default_precision}, same random init as neural-style": nstzoo_command(
                graph, content, style, size, args.reference_iterations, args.threads, stop_below=target),
            "float32, init from content": nstzoo_command(graph, content, style, size, args.reference_iterations,
                                                         args.threads, init="image", stop_below=target,
                                                         precision="float32"),
            "float32, same random init as neural-style": nstzoo_command(
                graph, content, style, size, args.reference_iterations, args.threads, stop_below=target,
                precision="float32"),
            f"{default_precision}, scales {size // 2},{size}, init from content": nstzoo_command(
                graph, content, style, size, args.reference_iterations, args.threads, init="image",
                scales=(size // 2, size), stop_below=target),
        }
        for label, command in races.items():
            records, _ = run_process(command, parse_nstzoo, env)
            reached = time_to_loss(records, target) if records and records[-1][2] <= target else None
            if reached is None:
                print(f"  nstzoo {label}: did not reach it in {len(records)} iterations "
                      f"(last loss {records[-1][2]:.6g}, {records[-1][0]:.1f} s)", flush=True)
            else:
                print(f"  nstzoo {label}: {reached:.1f} s, ratio {reached / reference_time:.2f} (goal <= 0.33)", flush=True)


if __name__ == "__main__":
    main()
