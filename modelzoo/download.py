"""The HTTP downloader: stream to a temporary file, hash while streaming, resume, retry, verify, rename.

A download writes to ``<file name>.<pid>-<token>.part`` next to its destination, so two processes never
share a temporary file even when the cache's file lock does nothing (some network file systems). A partial
file left by a process that no longer runs is adopted and resumed with an HTTP Range request. Only a file
whose size and hashes match the expected values is renamed into place, atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import secrets
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3

from modelzoo.errors import DownloadError, HashMismatchError, HtmlPageError, TruncatedDownloadError

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# An HTML page starts with one of these after optional whitespace and a byte-order mark.
HTML_PREFIXES = (b"<!doctype html", b"<html", b"<head", b"<body", b"<!--")
TLS_HINT = (
    "if a proxy or your organisation re-signs TLS traffic, point REQUESTS_CA_BUNDLE at its CA bundle "
    "(a PEM file) and try again"
)
PROXY_HINT = "check HTTPS_PROXY, HTTP_PROXY and NO_PROXY: requests sends every download through the proxy they name"

# Called with (bytes written so far, total bytes or None) after every chunk.
ProgressCallback = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class Expected:
    """Size and hashes the downloaded bytes must match; empty values are not checked."""

    size: int | None = None
    sha256: str = ""
    md5: str = ""


@dataclass(frozen=True)
class Downloaded:
    """A verified file at its final path."""

    path: Path
    url: str
    size: int
    sha256: str
    md5: str
    resumed_from: int


class _RetryableError(DownloadError):
    """A failure that another attempt may not repeat: a timeout, a dropped connection, a 5xx status."""

    def __init__(self, message: str, url: str, retry_after: float | None = None) -> None:
        super().__init__(message, url)
        self.retry_after = retry_after


class _RangeNotSatisfiable(DownloadError):
    """The server returned 416 to a Range request, so the partial file is discarded."""


class _Hashes:
    """sha256 (always) and md5 (only when asked) of the bytes written so far, computed in a worker thread.

    hashlib releases the GIL for large inputs, so hashing one chunk overlaps reading and writing the next
    one. Call ``close`` when done, or the worker thread waits for more chunks until the process exits.
    """

    def __init__(self, with_md5: bool) -> None:
        self.with_md5 = with_md5
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False) if with_md5 else None
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._worker: threading.Thread | None = None
        self.count = 0

    def _run(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is None:
                self._queue.task_done()
                return
            self._sha256.update(chunk)
            if self._md5 is not None:
                self._md5.update(chunk)
            self._queue.task_done()

    def update(self, chunk: bytes) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="nstzoo-hash", daemon=True)
            self._worker.start()
        self._queue.put(chunk)
        self.count += len(chunk)

    def update_from_file(self, path: Path) -> None:
        with open(path, "rb") as stream:
            while chunk := stream.read(CHUNK_SIZE):
                self.update(chunk)

    def hexdigests(self) -> tuple[str, str]:
        """Return (sha256, md5 or "") of every chunk given so far."""
        self._queue.join()
        return self._sha256.hexdigest(), self._md5.hexdigest() if self._md5 is not None else ""

    def close(self) -> None:
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = None

    def reset(self) -> None:
        self.close()
        self.__init__(self.with_md5)


# --- temporary files ---------------------------------------------------------------------------------


def temporary_path(destination: Path) -> Path:
    """Return a temporary path next to ``destination`` that no other process uses."""
    return destination.with_name(f"{destination.name}.{os.getpid()}-{secrets.token_hex(4)}.part")


def partial_files(destination: Path) -> list[Path]:
    """Return the temporary files of ``destination`` left in its folder by any process."""
    return sorted(destination.parent.glob(f"{destination.name}.*.part"))


def _owner_pid(partial: Path) -> int | None:
    tag = partial.name[: -len(".part")].rsplit(".", 1)[-1]
    pid_text = tag.split("-", 1)[0]
    return int(pid_text) if pid_text.isdigit() else None


def process_running(pid: int) -> bool:
    """Return True when a process with ``pid`` runs on this machine."""
    if sys.platform == "win32":
        # NOTE: os.kill(pid, 0) terminates the process on Windows, so there every pid counts as running
        # and partial files of other processes are never adopted.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def adopt_partial(destination: Path) -> Path:
    """Return a temporary path for ``destination``, holding the bytes of an abandoned partial file if any.

    A partial file is abandoned when the process named in it no longer runs. The largest one is renamed
    to this process's own temporary path (a rename cannot succeed twice, so two adopters never share it),
    and the smaller abandoned ones are deleted.
    """
    own = temporary_path(destination)
    abandoned = [path for path in partial_files(destination) if not process_running(_owner_pid(path) or os.getpid())]
    abandoned.sort(key=lambda path: path.stat().st_size if path.exists() else -1, reverse=True)
    adopted = False
    for path in abandoned:
        try:
            if not adopted:
                os.replace(path, own)
                adopted = True
                logger.info("resuming the partial download %s (%d bytes)", path.name, own.stat().st_size)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
    return own


# --- the transfer ------------------------------------------------------------------------------------


def looks_like_html(first_bytes: bytes) -> bool:
    """Return True when ``first_bytes`` start an HTML document."""
    head = first_bytes[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith(HTML_PREFIXES)


def _is_html_type(response: requests.Response, destination: Path) -> bool:
    content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    return content_type in ("text/html", "application/xhtml+xml") and destination.suffix.lower() not in (".html", ".htm")


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None


def _check_status(response: requests.Response, url: str, offset: int) -> None:
    status = response.status_code
    if status == 416 and offset:
        raise _RangeNotSatisfiable(f"HTTP 416 for a Range request from byte {offset}", url)
    if status in RETRY_STATUSES:
        raise _RetryableError(f"HTTP {status} {response.reason} from {url}", url, _retry_after(response))
    if status >= 400:
        raise DownloadError(f"HTTP {status} {response.reason} from {url}", url)


def _resume_offset(response: requests.Response, offset: int, url: str) -> int:
    """Return the byte the response body starts at: ``offset`` for a matching 206, else 0."""
    if not offset:
        return 0
    if response.status_code != 206:
        logger.info("%s ignored the Range request; downloading from the start", url)
        return 0
    content_range = response.headers.get("Content-Range", "")
    start_text = content_range.removeprefix("bytes ").split("-", 1)[0]
    if start_text != str(offset):
        raise _RangeNotSatisfiable(f"Content-Range '{content_range}' does not start at byte {offset}", url)
    return offset


def _total_size(response: requests.Response, start: int) -> int | None:
    length = response.headers.get("Content-Length", "")
    return start + int(length) if length.isdigit() else None


def _transfer(
    session: requests.Session,
    url: str,
    part: Path,
    hashes: _Hashes,
    expected: Expected,
    headers: dict[str, str],
    timeout: tuple[float, float],
    progress: ProgressCallback | None,
) -> None:
    """Append the rest of ``url`` to ``part`` and ``hashes``; raise on anything short of a full body."""
    offset = part.stat().st_size if part.exists() else 0
    request_headers = {"Accept-Encoding": "identity", **headers}
    if offset:
        request_headers["Range"] = f"bytes={offset}-"

    with session.get(url, headers=request_headers, stream=True, timeout=timeout) as response:
        _check_status(response, url, offset)
        start = _resume_offset(response, offset, url)
        if offset and not start:
            part.write_bytes(b"")
            hashes.reset()
        if _is_html_type(response, part):
            raise HtmlPageError(
                f"{url} returned an HTML page (Content-Type {response.headers.get('Content-Type')}), not the model file",
                url,
                hint="check the URL in a browser: it may be a landing or login page rather than the file itself",
            )
        # With a Content-Encoding, Content-Length counts the encoded bytes, so it cannot check the file's size.
        encoded = response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        total = None if encoded else _total_size(response, start)
        if expected.size and total is not None and total != expected.size:
            raise DownloadError(f"{url} announces {total} bytes but the card expects {expected.size}", url)

        received = start
        first = start == 0
        try:
            with open(part, "ab") as stream:
                # read1 returns the bytes that have arrived, so a broken connection loses none of them and
                # the next attempt resumes exactly where this one stopped.
                while chunk := response.raw.read1(CHUNK_SIZE, decode_content=encoded):
                    if first:
                        first = False
                        if looks_like_html(chunk):
                            raise HtmlPageError(
                                f"{url} returned an HTML page (its first bytes are HTML markup), not the model file",
                                url,
                                hint="check the URL in a browser: it may be a landing or error page",
                            )
                    stream.write(chunk)
                    stream.flush()  # so a killed process leaves on disk every byte it received
                    hashes.update(chunk)
                    received += len(chunk)
                    if progress is not None:
                        progress(received, total)
        except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, ConnectionError, TimeoutError) as error:
            if total is not None and received < total:
                raise _RetryableError(f"{TruncatedDownloadError(url, received, total)} ({error})", url) from error
            raise _RetryableError(f"connection to {url} broke after {received} bytes: {error}", url) from error
        if total is not None and received < total:
            raise _RetryableError(str(TruncatedDownloadError(url, received, total)), url)


def check_expected(model: str, url: str, size: int, sha256: str, md5: str, expected: Expected) -> None:
    """Raise HashMismatchError if the size, sha256 or md5 of a file differs from what the card expects."""
    if expected.size is not None and size != expected.size:
        raise HashMismatchError(model, url, "size", f"{expected.size} bytes", f"{size} bytes")
    if expected.sha256 and sha256 != expected.sha256:
        raise HashMismatchError(model, url, "sha256", expected.sha256, sha256)
    if expected.md5 and md5 != expected.md5:
        raise HashMismatchError(model, url, "md5", expected.md5, md5)


def _verify(model: str, url: str, part: Path, hashes: _Hashes, expected: Expected) -> None:
    sha256, md5 = hashes.hexdigests()
    check_expected(model, url, part.stat().st_size, sha256, md5, expected)


def _attempt_all(
    session: requests.Session,
    url: str,
    part: Path,
    hashes: _Hashes,
    expected: Expected,
    headers: dict[str, str],
    timeout: tuple[float, float],
    retries: int,
    backoff: float,
    progress: ProgressCallback | None,
) -> None:
    """Run ``_transfer`` until the body is complete, retrying what may be transient with exponential backoff."""
    for attempt in range(retries + 1):
        on_disk = part.stat().st_size if part.exists() else 0
        if hashes.count != on_disk:
            # A write failed half-way: hash the bytes on disk again so both describe the same prefix.
            hashes.reset()
            hashes.update_from_file(part)
        try:
            _transfer(session, url, part, hashes, expected, headers, timeout, progress)
            return
        except _RangeNotSatisfiable as error:
            logger.info("%s; downloading %s from the start", error, url)
            part.write_bytes(b"")
            hashes.reset()
            failure: DownloadError = error
        except requests.exceptions.SSLError as error:
            raise DownloadError(f"TLS certificate check failed for {url}: {error}", url, hint=TLS_HINT) from error
        except requests.exceptions.ProxyError as error:
            # Not retried: a proxy that rejects the request tends to be misconfigured, not busy.
            raise DownloadError(f"the proxy rejected or failed the request for {url}: {error}", url,
                                hint=PROXY_HINT) from error
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema) as error:
            raise DownloadError(f"invalid URL {url!r}: {error}", url) from error
        except _RetryableError as error:
            failure = error
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as error:
            if _is_name_resolution_failure(error):
                # Not retried: a host name that does not resolve now will not resolve in a few seconds,
                # and the next source (often the package index) should be tried at once.
                host = urllib.parse.urlsplit(url).hostname
                raise DownloadError(f"cannot resolve host '{host}' of {url} (no DNS or no internet access)", url) from error
            failure = _RetryableError(f"{type(error).__name__} for {url}: {error}", url)
        except requests.exceptions.RequestException as error:
            raise DownloadError(f"request for {url} failed: {error}", url) from error
        if attempt == retries:
            raise DownloadError(f"{failure} (gave up after {retries + 1} attempts)", url) from failure
        delay = backoff * 2**attempt
        retry_after = getattr(failure, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, min(retry_after, 60.0))
        logger.warning("attempt %d of %d failed: %s; retrying in %.1f s", attempt + 1, retries + 1, failure, delay)
        time.sleep(delay)


def _is_name_resolution_failure(error: BaseException) -> bool:
    """Return True if ``error`` or an exception it wraps is a failed DNS lookup."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (socket.gaierror, urllib3.exceptions.NameResolutionError)):
            return True
        stack.extend([current.__cause__, current.__context__])
        stack.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))
        stack.append(getattr(current, "reason", None) if isinstance(getattr(current, "reason", None), BaseException) else None)
    return False


def download(
    url: str,
    destination: Path,
    *,
    model: str,
    expected: Expected = Expected(),
    progress: ProgressCallback | None = None,
    headers: dict[str, str] | None = None,
    timeout: tuple[float, float] = (10.0, 60.0),
    retries: int = 4,
    backoff: float = 1.0,
    session: requests.Session | None = None,
) -> Downloaded:
    """Download ``url`` to ``destination`` and return it verified.

    ``timeout`` is (connect, read) in seconds; a read timeout counts a stalled transfer. Timeouts, broken
    connections, truncated bodies and HTTP 408/429/5xx are retried ``retries`` times, waiting ``backoff``
    seconds and doubling. A partial file left by a killed process is resumed with HTTP Range.

    Raises:
        HtmlPageError: the server sent an HTML page.
        HashMismatchError: the size, sha256 or md5 differs from ``expected``; the temporary file is deleted.
        DownloadError: any other failure, after the retries.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = adopt_partial(destination)
    own_session = session is None
    session = session or requests.Session()
    hashes = _Hashes(with_md5=bool(expected.md5))
    try:
        resumed_from = part.stat().st_size if part.exists() else 0
        if resumed_from:
            hashes.update_from_file(part)
        logger.info("downloading %s to %s", url, destination)
        _attempt_all(session, url, part, hashes, expected, headers or {}, timeout, retries, backoff, progress)
        try:
            _verify(model, url, part, hashes, expected)
        except HashMismatchError as error:
            if not resumed_from:
                raise
            # The partial file may come from an older version of the file; one clean download decides.
            logger.warning("%s; the download had resumed a partial file, so it starts again from byte 0", error)
            part.write_bytes(b"")
            hashes.reset()
            resumed_from = 0
            _attempt_all(session, url, part, hashes, expected, headers or {}, timeout, retries, backoff, progress)
            _verify(model, url, part, hashes, expected)
        os.replace(part, destination)
    except HashMismatchError:
        part.unlink(missing_ok=True)
        raise
    except HtmlPageError:
        part.unlink(missing_ok=True)
        raise
    except DownloadError as error:
        # Keep a partial file only when it can be resumed later; a permanent failure leaves nothing behind.
        if not isinstance(error.__cause__, _RetryableError):
            part.unlink(missing_ok=True)
        raise
    except OSError as error:
        # Every network error is a DownloadError by now, so this is the local disk: full, read-only, missing.
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"could not write {part}: {error}", url,
            hint=f"free disk space in {destination.parent} or set NSTZOO_HOME to a folder on a larger disk",
        ) from error
    finally:
        hashes.close()
        if own_session:
            session.close()

    sha256, md5 = hashes.hexdigests()
    return Downloaded(destination, url, destination.stat().st_size, sha256, md5, resumed_from)


def file_hashes(path: Path, with_md5: bool = False) -> tuple[str, str]:
    """Return the sha256 (and md5 when asked, else "") of the file at ``path``."""
    hashes = _Hashes(with_md5)
    try:
        hashes.update_from_file(path)
        return hashes.hexdigests()
    finally:
        hashes.close()
