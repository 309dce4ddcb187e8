"""The HTTP downloader against a real loopback server: resume, retries, HTML pages, hashes, temporary files."""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fixtures_http import payload, sha256
from httpserver import LoopbackServer
from modelzoo.download import Expected, adopt_partial, download, partial_files, temporary_path
from modelzoo.errors import DownloadError, HashMismatchError, HtmlPageError

SIZE = 300_000
FAST = {"retries": 3, "backoff": 0.01, "timeout": (5.0, 5.0)}


def dead_pid() -> int:
    """Return a pid that no process has: above Linux's pid_max, or else that of a process that has exited."""
    pid_max = Path("/proc/sys/kernel/pid_max")
    if pid_max.is_file():
        return int(pid_max.read_text()) + 1
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_download_writes_verified_file(http_server: LoopbackServer, tmp_path: Path):
    body = payload(SIZE)
    route = http_server.add("model.bin", body)
    target = tmp_path / "model.bin"

    result = download(http_server.url("model.bin"), target, model="tiny",
                      expected=Expected(size=SIZE, sha256=sha256(body)), **FAST)

    assert target.read_bytes() == body
    assert result.sha256 == hashlib.sha256(body).hexdigest()
    assert result.resumed_from == 0
    assert route.requests == 1
    assert leftovers(tmp_path) == ["model.bin"]


def test_download_reports_progress(http_server: LoopbackServer, tmp_path: Path):
    body = payload(3 * (1 << 20) + 5)
    http_server.add("model.bin", body)
    calls: list[tuple[int, int | None]] = []

    download(http_server.url("model.bin"), tmp_path / "model.bin", model="tiny",
             progress=lambda done, total: calls.append((done, total)), **FAST)

    assert calls[-1] == (len(body), len(body))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_hash_mismatch_deletes_download(http_server: LoopbackServer, tmp_path: Path):
    http_server.add("model.bin", payload(SIZE))
    wrong = "0" * 64
    url = http_server.url("model.bin")

    with pytest.raises(HashMismatchError) as caught:
        download(url, tmp_path / "model.bin", model="tiny", expected=Expected(sha256=wrong), **FAST)

    message = str(caught.value)
    assert "'tiny'" in message
    assert url in message
    assert wrong in message
    assert sha256(payload(SIZE)) in message
    assert "deleted" in message
    assert leftovers(tmp_path) == []


def test_md5_mismatch_names_md5(http_server: LoopbackServer, tmp_path: Path):
    body = payload(SIZE)
    http_server.add("model.bin", body)

    with pytest.raises(HashMismatchError, match="md5 mismatch") as caught:
        download(http_server.url("model.bin"), tmp_path / "model.bin", model="tiny",
                 expected=Expected(md5="f" * 32), **FAST)

    assert hashlib.md5(body).hexdigest() in str(caught.value)
    assert leftovers(tmp_path) == []


def test_md5_only_card_passes(http_server: LoopbackServer, tmp_path: Path):
    body = payload(SIZE)
    http_server.add("model.bin", body)

    result = download(http_server.url("model.bin"), tmp_path / "model.bin", model="tiny",
                      expected=Expected(md5=hashlib.md5(body).hexdigest()), **FAST)

    assert result.md5 == hashlib.md5(body).hexdigest()
    assert result.sha256 == sha256(body)


def test_announced_size_differs_from_card(http_server: LoopbackServer, tmp_path: Path):
    route = http_server.add("model.bin", payload(SIZE))

    with pytest.raises(DownloadError, match=f"announces {SIZE} bytes but the card expects {SIZE + 1}"):
        download(http_server.url("model.bin"), tmp_path / "model.bin", model="tiny",
                 expected=Expected(size=SIZE + 1), **FAST)

    assert route.requests == 1
    assert leftovers(tmp_path) == []


def test_truncated_transfer_resumes_with_range(http_server: LoopbackServer, tmp_path: Path):
    body = payload(SIZE)
    route = http_server.add("model.bin", body, cut_after=SIZE - 10)

    result = download(http_server.url("model.bin"), tmp_path / "model.bin", model="tiny",
                      expected=Expected(size=SIZE, sha256=sha256(body)), **FAST)

    assert result.path.read_bytes() == body
    assert route.range_headers == ["", f"bytes={SIZE - 10}-"]
    assert route.statuses == [200, 206]
    # Every byte crossed the wire once: the retry fetched only the missing 10.
    assert route.bytes_sent == SIZE


def test_truncated_transfer_names_byte_counts(http_server: LoopbackServer, tmp_path: Path):
    http_server.add("model.bin", payload(SIZE), cut_after=SIZE - 10, cut_times=100)

    with pytest.raises(DownloadError) as caught:
        download(http_server.url("model.bin"), tmp_path / "model.bin", model="tiny", retries=0, backoff=0.01)

    assert f"received {SIZE - 10} of {SIZE} bytes" in str(caught.value)
    assert not (tmp_path / "model.bin").exists()


def test_stalled_transfer_times_out_and_resumes(http_server: LoopbackServer, tmp_path: Path):
    body = payload(SIZE)
    route = http_server.add("model.bin", body, stall_after=100_000, stall_seconds=30)

    result = download(http_server.url("model.bin"), tmp_path / "model.bin", model="tiny",
                      expected=Expected(sha256=sha256(body)), retries=2, backoff=0.01, timeout=(5.0, 0.5))

    assert result.path.read_bytes() == body
    assert route.range_headers == ["", "bytes=100000-"]


@pytest.mark.parametrize("status", [500, 503])
def test_server_error_is_retried(http_server: LoopbackServer, tmp_path: Path, status: int, caplog):
    body = payload(SIZE)
    route = http_server.add("model.bin", body, fail_first=2, fail_status=status)

    with caplog.at_level(logging.WARNING, logger="modelzoo.download"):
        download(http_server.url("model.bin"), tmp_path / "model.bin", model="tiny",
                 expected=Expected(sha256=sha256(body)), **FAST)

    assert route.requests == 3
    assert route.statuses == [status, status, 200]
    retries = [record for record in caplog.records if "retrying" in record.getMessage()]
    assert len(retries) == 2


def test_persistent_server_error_gives_up(http_server: LoopbackServer, tmp_path: Path):
    route = http_server.add("model.bin", payload(SIZE), fail_first=100, fail_status=500)

    with pytest.raises(DownloadError, match="HTTP 500.*gave up after 4 attempts"):
        download(http_server.url("model.bin"), tmp_path / "model.bin", model="tiny", **FAST)

    assert route.requests == 4


def test_not_found_is_not_retried(http_server: LoopbackServer, tmp_path: Path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(http_server.url("missing.bin"), tmp_path / "model.bin", model="tiny", **FAST)

    assert leftovers(tmp_path) == []


def test_html_page_is_rejected_by_content_type(http_server: LoopbackServer, tmp_path: Path):
    """An HTML page differs on every request (a nonce), so its hash would differ each try; name the cause."""
    route = http_server.add("blob/model.bin", html=True)

    for _ in range(2):
        with pytest.raises(HtmlPageError, match="HTML page.*text/html"):
            download(http_server.url("blob/model.bin"), tmp_path / "model.bin", model="tiny",
                     expected=Expected(sha256="0" * 64), **FAST)

    assert route.requests == 2
    assert leftovers(tmp_path) == []


def test_html_page_is_rejected_by_first_bytes(http_server: LoopbackServer, tmp_path: Path):
    page = b"\n  <!DOCTYPE html>\n<html><body>Sign in to continue</body></html>"
    http_server.add("model.bin", page, content_type="application/octet-stream")

    with pytest.raises(HtmlPageError, match="first bytes are HTML"):
        download(http_server.url("model.bin"), tmp_path / "model.bin", model="tiny", **FAST)

    assert leftovers(tmp_path) == []


def test_partial_of_dead_process_is_resumed(http_server: LoopbackServer, tmp_path: Path):
    body = payload(SIZE)
    route = http_server.add("model.bin", body)
    target = tmp_path / "model.bin"
    abandoned = target.with_name(f"model.bin.{dead_pid()}-abcd1234.part")
    abandoned.write_bytes(body[:120_000])

    result = download(http_server.url("model.bin"), target, model="tiny",
                      expected=Expected(sha256=sha256(body)), **FAST)

    assert result.resumed_from == 120_000
    assert route.range_headers == ["bytes=120000-"]
    assert route.bytes_sent == SIZE - 120_000
    assert target.read_bytes() == body
    assert leftovers(tmp_path) == ["model.bin"]


def test_partial_of_running_process_is_left_alone(http_server: LoopbackServer, tmp_path: Path):
    body = payload(SIZE)
    route = http_server.add("model.bin", body)
    target = tmp_path / "model.bin"
    running = temporary_path(target)  # named after this process, which runs
    running.write_bytes(b"bytes another download is still writing")

    download(http_server.url("model.bin"), target, model="tiny", expected=Expected(sha256=sha256(body)), **FAST)

    assert route.range_headers == [""]
    assert running.read_bytes() == b"bytes another download is still writing"
    assert target.read_bytes() == body


def test_stale_partial_restarts_from_zero(http_server: LoopbackServer, tmp_path: Path, caplog):
    """A partial file of an older version of the file fails the hash after resuming; one clean retry fixes it."""
    body = payload(SIZE)
    route = http_server.add("model.bin", body)
    target = tmp_path / "model.bin"
    target.with_name(f"model.bin.{dead_pid()}-00000000.part").write_bytes(payload(50_000, seed=7))

    with caplog.at_level(logging.WARNING, logger="modelzoo.download"):
        result = download(http_server.url("model.bin"), target, model="tiny",
                          expected=Expected(sha256=sha256(body)), **FAST)

    assert target.read_bytes() == body
    assert result.resumed_from == 0
    assert route.range_headers == ["bytes=50000-", ""]
    assert any("starts again from byte 0" in record.getMessage() for record in caplog.records)


def test_server_without_range_support_restarts(http_server: LoopbackServer, tmp_path: Path):
    body = payload(SIZE)
    route = http_server.add("model.bin", body, ranges=False)
    target = tmp_path / "model.bin"
    target.with_name(f"model.bin.{dead_pid()}-00000000.part").write_bytes(body[:1000])

    download(http_server.url("model.bin"), target, model="tiny", expected=Expected(sha256=sha256(body)), **FAST)

    assert route.statuses == [200]
    assert target.read_bytes() == body


def test_range_not_satisfiable_restarts(http_server: LoopbackServer, tmp_path: Path):
    body = payload(SIZE)
    route = http_server.add("model.bin", body)
    target = tmp_path / "model.bin"
    target.with_name(f"model.bin.{dead_pid()}-00000000.part").write_bytes(payload(SIZE + 10, seed=3))

    download(http_server.url("model.bin"), target, model="tiny", expected=Expected(sha256=sha256(body)), **FAST)

    assert route.statuses == [416, 200]
    assert target.read_bytes() == body


def test_adopt_partial_keeps_largest(tmp_path: Path):
    target = tmp_path / "model.bin"
    pid = dead_pid()
    target.with_name(f"model.bin.{pid}-aaaaaaaa.part").write_bytes(b"x" * 10)
    target.with_name(f"model.bin.{pid}-bbbbbbbb.part").write_bytes(b"y" * 20)

    own = adopt_partial(target)

    assert own.read_bytes() == b"y" * 20
    assert partial_files(target) == [own]


def test_concurrent_downloads_without_lock(tmp_path: Path):
    """With no file lock (as on some network file systems), each download writes its own temporary file."""
    server = LoopbackServer()
    body = payload(1 << 20)
    route = server.add("model.bin", body, chunk_size=64 * 1024, throttle=0.01)
    target = tmp_path / "model.bin"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            download(server.url("model.bin"), target, model="tiny", expected=Expected(sha256=sha256(body)), **FAST)
        except BaseException as error:  # noqa: BLE001 - reported by the assert below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    server.close()

    assert errors == []
    assert route.requests == 3
    assert sha256(target.read_bytes()) == sha256(body)
    assert leftovers(tmp_path) == ["model.bin"]


def _self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed, so no test certificate can be made")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return key, cert


def test_tls_failure_suggests_ca_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import ssl

    key, cert = _self_signed_certificate(tmp_path)
    server = LoopbackServer()
    server.add("model.bin", payload(1000))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.server.socket = context.wrap_socket(server.server.socket, server_side=True)
    url = server.url("model.bin").replace("http://", "https://")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    try:
        with pytest.raises(DownloadError) as caught:
            download(url, tmp_path / "model.bin", model="tiny", **FAST)
        assert "TLS certificate check failed" in str(caught.value)
        assert "REQUESTS_CA_BUNDLE" in caught.value.hint

        # With the test CA in REQUESTS_CA_BUNDLE, requests trusts the server and the download succeeds.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        result = download(url, tmp_path / "model.bin", model="tiny", **FAST)
        assert result.size == 1000
    finally:
        server.close()


def test_connection_refused_is_retried_then_reported(tmp_path: Path):
    server = LoopbackServer()
    url = server.url("model.bin")
    server.close()

    with pytest.raises(DownloadError, match="ConnectionError.*gave up after 2 attempts"):
        download(url, tmp_path / "model.bin", model="tiny", retries=1, backoff=0.01)


def test_proxy_is_used_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """requests honours HTTPS_PROXY; a proxy that rejects CONNECT fails at once with a hint about it."""
    server = LoopbackServer()  # returns 501 to CONNECT, as a proxy without HTTPS support does
    monkeypatch.setenv("HTTPS_PROXY", server.base_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        with pytest.raises(DownloadError, match="proxy rejected or failed") as caught:
            download("https://nstzoo-test.invalid/model.bin", tmp_path / "model.bin", model="tiny", **FAST)
    finally:
        server.close()

    assert "HTTPS_PROXY" in caught.value.hint
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(sys.platform != "linux", reason="uses RLIMIT_FSIZE and SIGXFSZ")
def test_write_failure_names_disk(http_server: LoopbackServer, tmp_path: Path):
    """A file-size limit makes write() fail as a full disk does; the error names the folder and the fix."""
    http_server.add("model.bin", payload(SIZE))
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from modelzoo.download import download\n"
        "from modelzoo.errors import DownloadError\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
        "try:\n"
        "    download(sys.argv[1], Path(sys.argv[2]), model='tiny', retries=0)\n"
        "except DownloadError as error:\n"
        "    print(error)\n"
        "    print(error.hint)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, http_server.url("model.bin"), str(tmp_path / "model.bin")],
                            capture_output=True, text=True, timeout=60)

    assert result.stdout.startswith("could not write"), result.stdout + result.stderr
    assert "File too large" in result.stdout
    assert f"free disk space in {tmp_path}" in result.stdout
    assert leftovers(tmp_path) == []
