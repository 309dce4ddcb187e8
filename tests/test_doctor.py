"""``nstzoo doctor``: every topic reported, the network checked only through NSTZOO_MIRROR on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


from modelzoo.cli import doctor
from modelzoo.cli.main import main


def run_doctor(capsys) -> tuple[int, str]:
    try:
        main(["doctor"])
        status = 0
    except SystemExit as error:
        status = int(error.code or 0)
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_doctor_reports_every_topic(nstzoo_home: Path, capsys) -> None:
    status, output = run_doctor(capsys)
    assert status == 0, output
    for topic in ("torch", "cuda", "cudnn", "ram", "cache", "disk", "offline", "network"):
        assert f" {topic} " in output, f"no '{topic}' line in:\n{output}"
    assert torch.__version__ in output
    assert str(nstzoo_home / "models") in output
    assert "network  not checked" in output


def test_cache_size_reported(nstzoo_home: Path) -> None:
    model_files = nstzoo_home / "models" / "some_model" / "files"
    model_files.mkdir(parents=True)
    (model_files / "weights.bin").write_bytes(b"\0" * 2_500_000)
    (cache_line,) = [check for check in doctor.check_cache() if check.topic == "cache"]
    assert cache_line.finding.endswith("2.5 MB in use")


def test_mirror_checked_on_loopback(nstzoo_home: Path, http_server, monkeypatch, capsys) -> None:
    root = http_server.add("/", b"mirror index")
    monkeypatch.setenv("NSTZOO_MIRROR", http_server.base_url)
    status, output = run_doctor(capsys)
    assert status == 0, output
    assert f"mirror {http_server.base_url} reachable (HTTP 200)" in output
    assert root.requests == 1


def test_unreachable_mirror_fails_with_fix(nstzoo_home: Path, http_server, monkeypatch, capsys) -> None:
    url = http_server.base_url
    http_server.close()  # the port is now closed: connections are refused
    monkeypatch.setenv("NSTZOO_MIRROR", url)
    status, output = run_doctor(capsys)
    assert status == 1
    assert f"FAIL network  mirror {url} unreachable" in output
    assert "-> check NSTZOO_MIRROR" in output


def test_offline_skips_mirror(nstzoo_home: Path, http_server, monkeypatch, capsys) -> None:
    monkeypatch.setenv("NSTZOO_MIRROR", http_server.base_url)
    monkeypatch.setenv("NSTZOO_OFFLINE", "1")
    status, output = run_doctor(capsys)
    assert status == 0
    assert "not checked, because NSTZOO_OFFLINE is set" in output
    assert http_server.total_requests() == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_no_cuda_gives_a_fix() -> None:
    (cuda_line,) = [check for check in doctor.check_torch() if check.topic == "cuda"]
    assert cuda_line.finding.startswith("not available")
    assert cuda_line.fix
