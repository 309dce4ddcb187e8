"""Download throughput of nstzoo's downloader against pooch, both checking sha256, from a loopback server.

Usage: python benchmarks/fetch.py [--size-mb 512] [--rounds 3]

A random file of --size-mb megabytes (at least 500) is written once to a temporary folder and served by
tests/httpserver.py in a separate process on 127.0.0.1, so the server does not compete with the client for
the GIL. Each round downloads it once with ``modelzoo.download.download`` and once with ``pooch.retrieve``
(``known_hash`` set, default downloader, and again with 1 MiB chunks), in alternating order. The script
prints the median MB/s (1 MB = 10^6 bytes) of each and the ratios, all measured in this one run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
SERVER_SCRIPT = """
import sys, time
sys.path.insert(0, sys.argv[2])
from httpserver import LoopbackServer
server = LoopbackServer()
server.add("big.bin", open(sys.argv[1], "rb").read())
print(server.url("big.bin"), flush=True)
sys.stdin.read()
server.close()
"""


def make_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path`` and return their sha256."""
    digest = hashlib.sha256()
    block = 16 << 20
    with open(path, "wb") as stream:
        written = 0
        while written < size:
            chunk = os.urandom(min(block, size - written))
            stream.write(chunk)
            digest.update(chunk)
            written += len(chunk)
    return digest.hexdigest()


def time_nstzoo(url: str, target: Path, size: int, sha256: str) -> float:
    from modelzoo.download import Expected, download

    start = time.perf_counter()
    download(url, target, model="benchmark", expected=Expected(size=size, sha256=sha256), retries=0)
    return time.perf_counter() - start


def time_pooch(url: str, target: Path, sha256: str, chunk_size: int | None) -> float:
    import pooch

    downloader = pooch.HTTPDownloader(chunk_size=chunk_size) if chunk_size else None
    start = time.perf_counter()
    pooch.retrieve(url, known_hash=f"sha256:{sha256}", fname=target.name, path=target.parent,
                   progressbar=False, downloader=downloader)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512, help="file size in MB (10^6 bytes), at least 500")
    parser.add_argument("--rounds", type=int, default=3, help="downloads per downloader")
    parser.add_argument("--dir", default=None, help="folder for the file and the downloads (default: the system temp folder)")
    args = parser.parse_args()
    if args.size_mb < 500:
        parser.error(f"--size-mb {args.size_mb} is below 500; the benchmark is specified for at least 500 MB")
    size = args.size_mb * 1_000_000

    with tempfile.TemporaryDirectory(prefix="nstzoo-bench-", dir=args.dir) as folder:
        folder_path = Path(folder)
        source = folder_path / "big.bin"
        sha256 = make_file(source, size)
        server = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(source), str(REPOSITORY_ROOT / "tests")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            url = server.stdout.readline().strip()
            runners = {
                "nstzoo": lambda target: time_nstzoo(url, target, size, sha256),
                "pooch": lambda target: time_pooch(url, target, sha256, None),
                "pooch (1 MiB chunks)": lambda target: time_pooch(url, target, sha256, 1 << 20),
            }
            seconds: dict[str, list[float]] = {name: [] for name in runners}
            for round_index in range(args.rounds):
                order = list(runners) if round_index % 2 == 0 else list(reversed(runners))
                for name in order:
                    target = folder_path / "out" / f"{name.split()[0]}-{round_index}.bin"
                    target.parent.mkdir(exist_ok=True)
                    seconds[name].append(runners[name](target))
                    target.unlink()
        finally:
            server.stdin.close()
            server.wait(timeout=30)

    print(f"file: {size / 1e6:.0f} MB from 127.0.0.1, {args.rounds} rounds, sha256 checked by every downloader")
    medians = {name: size / 1e6 / statistics.median(values) for name, values in seconds.items()}
    for name, rate in medians.items():
        rates = ", ".join(f"{size / 1e6 / value:.0f}" for value in seconds[name])
        print(f"{name:22} median {rate:7.1f} MB/s  (rounds: {rates})")
    print(f"ratio nstzoo / pooch:                {medians['nstzoo'] / medians['pooch']:.2f}x")
    print(f"ratio nstzoo / pooch (1 MiB chunks): {medians['nstzoo'] / medians['pooch (1 MiB chunks)']:.2f}x")


if __name__ == "__main__":
    main()
