"""cuDNN settings, and a retry that works around cuDNN failures instead of stopping the run.

cuDNN raises ``CUDNN_STATUS_NOT_SUPPORTED`` for some convolution shapes and ``CUDNN_STATUS_ALLOC_FAILED``
or ``CUDNN_STATUS_INTERNAL_ERROR`` when its workspace does not fit in memory, which large images make
likely. ``run_with_cudnn_fallback`` retries first with a capped workspace and autotuning off, then with
cuDNN disabled (PyTorch's native CUDA convolutions: slower, but they run).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any, Callable, Iterator, TypeVar

import torch

from modelzoo.errors import NstzooError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# PyTorch's documentation of CUDA environment variables lists this one as cuDNN's workspace limit per
# allocation; its value is in MiB. NOTE: if PyTorch reads it only once per process, the cap takes effect
# only in runs that set it before the first convolution, and this retry then relies on benchmark=False.
WORKSPACE_ENV = "CUDNN_CONV_WSCAP_DBG"
SMALL_WORKSPACE_MIB = 256
CUDNN_STATUS = re.compile(r"CUDNN_STATUS_[A-Z_]+")
# PyTorch's other wordings of a cuDNN failure: the generic prefix, and the messages of the v7 and v8 APIs
# when no convolution algorithm fits (which usually means its workspace did not).
CUDNN_MESSAGE = re.compile(
    r"cuDNN error|Unable to find a valid cuDNN algorithm|unable to find an engine to execute", re.IGNORECASE
)


class CudnnFallbackError(NstzooError, RuntimeError):
    """Every cuDNN fallback failed; ``attempts`` contains one line per try."""

    def __init__(self, attempts: list[str]) -> None:
        self.attempts = attempts
        lines = "\n".join(f"  - {line}" for line in attempts)
        super().__init__(f"cuDNN failed, and so did every fallback:\n{lines}",
                         hint="run on the CPU (--device cpu), use a smaller image or --tile, or run 'nstzoo doctor'")


def cudnn_status(error: BaseException) -> str:
    """Return the cuDNN status named in ``error`` (such as ``CUDNN_STATUS_ALLOC_FAILED``), or ''."""
    if not isinstance(error, RuntimeError):
        return ""
    match = CUDNN_STATUS.search(str(error)) or CUDNN_MESSAGE.search(str(error))
    return match.group(0) if match else ""


def configure_cudnn(enabled: bool = True, benchmark: bool = False) -> None:
    """Turn cuDNN on or off and set autotuning (``benchmark``: try algorithms per shape, keep the fastest).

    neural-style's ``-backend nn`` is ``enabled=False``; its ``-cudnn_autotune`` is ``benchmark=True``.
    """
    torch.backends.cudnn.enabled = enabled
    torch.backends.cudnn.benchmark = benchmark
    logger.debug("cuDNN enabled=%s benchmark=%s (available: %s)", enabled, benchmark,
                 torch.backends.cudnn.is_available())


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _small_workspace() -> contextlib.AbstractContextManager:
    stack = contextlib.ExitStack()
    stack.enter_context(_environment(WORKSPACE_ENV, str(SMALL_WORKSPACE_MIB)))
    stack.enter_context(torch.backends.cudnn.flags(enabled=True, benchmark=False,
                                                   deterministic=torch.backends.cudnn.deterministic))
    return stack


def _cudnn_disabled() -> contextlib.AbstractContextManager:
    return torch.backends.cudnn.flags(enabled=False)


# The retries, in order: a name for the log and a context manager factory.
FALLBACKS: tuple[tuple[str, Callable[[], contextlib.AbstractContextManager]], ...] = (
    (f"a {SMALL_WORKSPACE_MIB} MiB cuDNN workspace ({WORKSPACE_ENV}) with autotuning off", _small_workspace),
    ("cuDNN disabled", _cudnn_disabled),
)


def _release_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_with_cudnn_fallback(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Return ``fn(*args, **kwargs)``, retrying after a cuDNN failure.

    On a ``RuntimeError`` naming a cuDNN status, logs a WARNING with the status and the next setting, then
    calls ``fn`` again with a smaller cuDNN workspace and autotuning off, and then with cuDNN disabled. The
    settings hold only during the retry. Any other error propagates unchanged, and so does a failure of a
    retry that is not a cuDNN error. Raises ``CudnnFallbackError`` when every retry fails with cuDNN.

    ``fn`` runs again from the start, so it must not depend on state that its failed call changed.
    """
    try:
        return fn(*args, **kwargs)
    except RuntimeError as error:
        status = cudnn_status(error)
        if not status:
            raise
        attempts = [f"default settings: {status}"]
        last_error: RuntimeError = error

    for description, settings in FALLBACKS:
        logger.warning("cuDNN failed with %s; retrying with %s", cudnn_status(last_error), description)
        _release_cached_memory()
        try:
            with settings():
                result = fn(*args, **kwargs)
        except RuntimeError as error:
            status = cudnn_status(error)
            if not status:
                raise
            attempts.append(f"{description}: {status}")
            last_error = error
            continue
        logger.warning("the retry with %s succeeded; turning cuDNN off or using a smaller image skips the "
                       "failing attempt next time", description)
        return result
    raise CudnnFallbackError(attempts) from last_error
