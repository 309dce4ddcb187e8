"""The number type the network runs in: ``precision="auto"`` picks bfloat16 where the CPU computes it natively.

On a CPU with AVX-512 BF16 or AMX-BF16, oneDNN runs bfloat16 convolutions natively, and the activations
take half the memory. For VGG-19 an iteration took 0.67x the time of a float32 one at 256 px and 0.56x at
512 px on a 2-core AMD EPYC with AVX-512 BF16 (``benchmarks/engine.py``). Only the network's activations and the gradients that
flow back through it are bfloat16. The optimised image, the L-BFGS state, the targets' Gram matrices and
the losses stay float32 (see ``modelzoo.engine.taps``).

Elsewhere (other CPUs, CUDA, MPS) "auto" is float32. Without native support bfloat16 is emulated and
slower. On CUDA, PyTorch already lets cuDNN run float32 convolutions in TF32
(``torch.backends.cudnn.allow_tf32`` is on by default).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

NATIVE_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bfloat16(cpuinfo: str | None = None) -> bool:
    """Return whether the CPU lists AVX-512 BF16 or AMX-BF16 among its flags (Linux x86-64; False elsewhere)."""
    if cpuinfo is None:
        if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
            return False
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return any(flag in flags for flag in NATIVE_BFLOAT16_FLAGS)
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """Return "float32" or "bfloat16" for ``precision`` ("auto", "float32" or "bfloat16") on ``device``."""
    if precision != "auto":
        return precision
    chosen = "bfloat16" if torch.device(device).type == "cpu" and cpu_has_native_bfloat16() else "float32"
    logger.debug("precision auto: %s on %s", chosen, device)
    return chosen


def network_precision(precision: str, device: torch.device | str):
    """Return the context the network runs in: bfloat16 autocast for "bfloat16", else one that does nothing."""
    if precision == "bfloat16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
