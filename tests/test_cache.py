"""Cache layout and operations: the hash record, ls, verify, rm and prune."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_http import payload, sha256, write_card
from httpserver import LoopbackServer
from modelzoo import cache, config
from modelzoo.errors import NotCachedError
from modelzoo.fetch import fetch, load_registry

SIZE = 50_000


def cached_tiny(home: Path, server: LoopbackServer, with_hash: bool = True) -> bytes:
    body = payload(SIZE)
    server.add("tiny.bin", body)
    entry = {"name": "tiny.bin", "role": "weights", "size": SIZE, "sources": [server.url("tiny.bin")]}
    if with_hash:
        entry["sha256"] = sha256(body)
    write_card(home, "tiny", [entry])
    fetch("tiny", convert=False)
    return body


def test_layout_follows_home(nstzoo_home: Path):
    assert cache.model_dir("vgg19") == nstzoo_home / "models" / "vgg19"
    assert cache.file_path("vgg19", "a.caffemodel") == nstzoo_home / "models" / "vgg19" / "files" / "a.caffemodel"
    assert cache.converted_dir("vgg19") == nstzoo_home / "models" / "vgg19" / "converted"


def test_default_root_is_platform_cache(monkeypatch: pytest.MonkeyPatch):
    import platformdirs

    monkeypatch.delenv("NSTZOO_HOME", raising=False)

    assert config.cache_dir() == Path(platformdirs.user_cache_dir("nstzoo")) / "models"


def test_hash_record_round_trip(nstzoo_home: Path):
    cache.model_dir("tiny").mkdir(parents=True)
    cache.record_hash("tiny", "a.bin", "ab" * 32, 10, "http://127.0.0.1/a.bin", tofu=True)
    cache.record_hash("tiny", "b.bin", "cd" * 32, 20, "http://127.0.0.1/b.bin", tofu=False)

    recorded = cache.read_hashes("tiny")

    assert recorded["a.bin"]["sha256"] == "ab" * 32
    assert recorded["a.bin"]["tofu"] is True
    assert recorded["b.bin"]["size"] == 20
    cache.forget_hash("tiny", "a.bin")
    assert list(cache.read_hashes("tiny")) == ["b.bin"]


def test_unreadable_hash_record_is_ignored(nstzoo_home: Path):
    cache.model_dir("tiny").mkdir(parents=True)
    (cache.model_dir("tiny") / "hashes.json").write_text("{not json")

    assert cache.read_hashes("tiny") == {}


def test_ls_lists_files_and_unknown_models(nstzoo_home: Path, http_server: LoopbackServer):
    cached_tiny(nstzoo_home, http_server)
    stray = cache.files_dir("gone")
    stray.mkdir(parents=True)
    (stray / "old.bin").write_bytes(b"12345")

    models = {model.name: model for model in cache.list_models(load_registry())}

    assert [(item.name, item.size) for item in models["tiny"].files] == [("tiny.bin", SIZE)]
    assert models["tiny"].known and not models["tiny"].converted
    assert not models["gone"].known
    assert models["gone"].size == 5


def test_verify_reports_ok_then_mismatch(nstzoo_home: Path, http_server: LoopbackServer):
    body = cached_tiny(nstzoo_home, http_server)
    registry = load_registry()

    assert [result.status for result in cache.verify(registry)] == ["ok"]
    path = cache.file_path("tiny", "tiny.bin")
    damaged = bytearray(body)
    damaged[1000] ^= 0xFF
    path.write_bytes(bytes(damaged))

    (result,) = cache.verify(registry, ["tiny"])
    assert result.status == "mismatch"
    assert result.expected == sha256(body)
    assert result.actual == hashlib.sha256(bytes(damaged)).hexdigest()
    assert result.reference == "card"


def test_verify_uses_recorded_hash(nstzoo_home: Path, http_server: LoopbackServer):
    cached_tiny(nstzoo_home, http_server, with_hash=False)
    cache.file_path("tiny", "tiny.bin").write_bytes(b"changed")

    (result,) = cache.verify(load_registry(), ["tiny"])

    assert result.status == "mismatch"
    assert result.reference == "recorded on first download"


def test_verify_reports_missing_and_unchecked(nstzoo_home: Path, http_server: LoopbackServer):
    cached_tiny(nstzoo_home, http_server)
    cache.file_path("tiny", "tiny.bin").unlink()
    (cache.files_dir("tiny") / "notes.txt").write_text("a file no card lists")

    statuses = {result.file_name: result.status for result in cache.verify(load_registry(), ["tiny"])}

    assert statuses == {"tiny.bin": "missing", "notes.txt": "unchecked"}


def test_verify_unknown_model_raises(nstzoo_home: Path):
    with pytest.raises(NotCachedError, match="'vgg19' is not in the cache"):
        cache.verify(load_registry(), ["vgg19"])


def test_rm_removes_model(nstzoo_home: Path, http_server: LoopbackServer):
    cached_tiny(nstzoo_home, http_server)

    freed = cache.remove_model("tiny")

    assert freed >= SIZE
    assert not cache.model_dir("tiny").exists()
    with pytest.raises(NotCachedError):
        cache.remove_model("tiny")


def test_prune_removes_partials_and_unknown(nstzoo_home: Path, http_server: LoopbackServer):
    cached_tiny(nstzoo_home, http_server)
    partial = cache.files_dir("tiny") / "tiny.bin.99999-abcdef12.part"
    partial.write_bytes(b"x" * 100)
    stray = cache.files_dir("gone")
    stray.mkdir(parents=True)
    (stray / "old.bin").write_bytes(b"12345")

    removed = {path for path, _ in cache.prune(load_registry())}

    assert partial in removed
    assert not partial.exists()
    assert not cache.model_dir("gone").exists()
    assert cache.file_path("tiny", "tiny.bin").is_file()


def test_prune_skips_locked_model(nstzoo_home: Path, http_server: LoopbackServer):
    """A partial file of a running download survives prune: another process holds the model's lock."""
    cached_tiny(nstzoo_home, http_server)
    partial = cache.files_dir("tiny") / f"tiny.bin.{os.getpid()}-abcdef12.part"
    partial.write_bytes(b"x" * 100)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import filelock, sys, time; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); "
         "print('held', flush=True); time.sleep(60)", str(cache.model_dir("tiny") / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cache.prune(load_registry())
        assert partial.exists()
    finally:
        holder.kill()
        holder.wait()
