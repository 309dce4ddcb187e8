"""Errors of the user-facing library: downloads, the cache, images and the style engine.

Each subclasses the closest builtin and carries the model name, path, URL or hash involved. The CLI turns
them into one line with the next command to run.
"""

from __future__ import annotations


class NstzooError(Exception):
    """Base class; ``hint`` is the next thing for the user to do."""

    hint: str = ""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        if hint:
            self.hint = hint


class DownloadError(NstzooError, OSError):
    """A source could not be downloaded (network failure, HTTP error, truncated transfer, HTML page)."""

    def __init__(self, message: str, url: str = "", hint: str = "") -> None:
        super().__init__(message, hint)
        self.url = url


class HashMismatchError(DownloadError):
    """Downloaded bytes do not match the card's size or hash; the download was deleted."""

    def __init__(self, model: str, url: str, algorithm: str, expected: str, actual: str) -> None:
        self.model = model
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual
        message = (
            f"{algorithm} mismatch for model '{model}' from {url}: expected {expected}, got {actual}. "
            "The download was deleted. Likely causes: the file changed upstream, the server returned an "
            "error page or a truncated file, or the card's hash is wrong"
        )
        super().__init__(message, url, hint=f"run 'nstzoo fetch {model} --force' to try again, or check the card with 'nstzoo info {model}'")


class OfflineError(NstzooError, OSError):
    """The network is needed but offline mode is on."""


class AllSourcesFailedError(DownloadError):
    """Every source of a file failed; ``failures`` contains one line per source."""

    def __init__(self, model: str, file_name: str, failures: list[str], hint: str = "") -> None:
        self.model = model
        self.file_name = file_name
        self.failures = failures
        lines = "\n".join(f"  - {line}" for line in failures)
        super().__init__(f"could not fetch {file_name} of model '{model}'; every source failed:\n{lines}", hint=hint)


class NotCachedError(NstzooError, FileNotFoundError):
    """A model is not in the cache."""


class ImageError(NstzooError, ValueError):
    """An image could not be read or written."""


class OptionError(NstzooError, ValueError):
    """A style-transfer option has an invalid value."""


class TruncatedDownloadError(DownloadError):
    """The server closed the connection before sending the bytes its Content-Length announced."""

    def __init__(self, url: str, received: int, expected: int) -> None:
        self.received = received
        self.expected = expected
        super().__init__(
            f"truncated transfer from {url}: received {received} of {expected} bytes (Content-Length)", url
        )


class HtmlPageError(DownloadError):
    """The server returned an HTML page where a model file was expected."""


class NoSourceError(NstzooError, LookupError):
    """A model file has no download source; the user must provide it (``hint`` gives the command)."""

    def __init__(self, model: str, file_name: str, hint: str = "") -> None:
        self.model = model
        self.file_name = file_name
        super().__init__(f"model '{model}' has no download source for {file_name}", hint)


class CacheError(NstzooError, OSError):
    """The cache folder could not be read or changed as requested."""
