"""CLI command ``doctor``: what this machine offers nstzoo, each problem with what to do about it."""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import typer

DOCTOR_HELP = """Report torch, CUDA, cuDNN, devices and memory, the cache and the network, with fixes.

The network check contacts only NSTZOO_MIRROR when it is set; otherwise it reports "not checked".

\b
Examples:
  nstzoo doctor
  NSTZOO_MIRROR=http://127.0.0.1:8000 nstzoo doctor
"""

NETWORK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    """One line of the report: a topic, what was found, whether it is fine, and the fix when it is not."""

    topic: str
    finding: str
    ok: bool = True
    fix: str = ""


def _gib(value: int) -> str:
    return f"{value / 2**30:.1f} GiB"


def check_torch() -> list[Check]:
    import torch

    checks = [Check("torch", f"{torch.__version__}, {torch.get_num_threads()} CPU threads "
                             f"(os.cpu_count() = {os.cpu_count()})")]
    if not torch.cuda.is_available():
        built = torch.version.cuda
        fix = ("no GPU driver or device found; install the NVIDIA driver, or run on the CPU (the default)"
               if built else "this torch build has no CUDA; install a CUDA build of torch from pytorch.org to use a GPU")
        checks.append(Check("cuda", f"not available (torch built with CUDA {built or 'none'})", True, fix))
        return checks
    checks.append(Check("cuda", f"available, CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s)"))
    for index in range(torch.cuda.device_count()):
        name = torch.cuda.get_device_name(index)
        free, total = torch.cuda.mem_get_info(index)
        low = free < 2 * 2**30
        checks.append(Check(f"cuda:{index}", f"{name}, {_gib(free)} free of {_gib(total)}", not low,
                            "less than 2 GiB free: close other GPU programs, or use --tile / a smaller size" if low else ""))
    return checks


def check_cudnn() -> Check:
    import torch

    if not torch.backends.cudnn.is_available():
        return Check("cudnn", "not available", True, "only needed on NVIDIA GPUs; install a CUDA build of torch for it")
    return Check("cudnn", f"version {torch.backends.cudnn.version()}, enabled={torch.backends.cudnn.enabled}, "
                          f"benchmark={torch.backends.cudnn.benchmark}")


def check_ram() -> Check:
    from modelzoo.devices import available_ram

    available = available_ram()
    if not available:
        return Check("ram", "available memory unknown (no /proc/meminfo)")
    low = available < 4 * 2**30
    return Check("ram", f"{_gib(available)} available", not low,
                 "under 4 GiB available: use a smaller --image-size or --tile" if low else "")


def check_cache() -> list[Check]:
    from modelzoo import config

    home = config.home()
    folder = config.cache_dir()
    checks = []
    if folder.is_dir():
        size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
        checks.append(Check("cache", f"{folder}, {size / 10**6:.1f} MB in use"))
    else:
        checks.append(Check("cache", f"{folder} (empty: nothing fetched yet)"))
    existing = next((parent for parent in (home, *home.parents) if parent.exists()), Path("/"))
    if not os.access(existing, os.W_OK):
        checks.append(Check("cache", f"{existing} is not writable", False,
                            "set NSTZOO_HOME to a writable folder"))
    free = shutil.disk_usage(existing).free
    low = free < 2 * 10**9
    checks.append(Check("disk", f"{free / 10**9:.1f} GB free under {existing}", not low,
                        "under 2 GB free: 'nstzoo cache prune' or point NSTZOO_HOME at a larger disk" if low else ""))
    return checks


def check_network() -> list[Check]:
    from modelzoo import config

    checks = [Check("offline", "NSTZOO_OFFLINE is set: only cached models work" if config.offline()
                    else "NSTZOO_OFFLINE is not set")]
    mirror = config.mirror()
    if not mirror:
        checks.append(Check("network", "not checked (set NSTZOO_MIRROR to check a mirror; no other host is contacted)"))
        return checks
    if config.offline():
        checks.append(Check("network", f"mirror {mirror} not checked, because NSTZOO_OFFLINE is set"))
        return checks
    try:
        with urllib.request.urlopen(mirror + "/", timeout=NETWORK_TIMEOUT_S) as response:
            checks.append(Check("network", f"mirror {mirror} reachable (HTTP {response.status})"))
    except urllib.error.HTTPError as error:
        # The server responded, so it is reachable; a 404 on the folder itself is normal for a file mirror.
        checks.append(Check("network", f"mirror {mirror} reachable (HTTP {error.code})"))
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        checks.append(Check("network", f"mirror {mirror} unreachable: {reason}", False,
                            "check NSTZOO_MIRROR (a URL such as http://host:port/path) and that the server runs"))
    return checks


def run_checks() -> list[Check]:
    """Return every check in report order."""
    return [*check_torch(), check_cudnn(), check_ram(), *check_cache(), *check_network()]


def format_check(check: Check) -> str:
    status = "ok  " if check.ok else "FAIL"
    line = f"{status} {check.topic:<8} {check.finding}"
    if check.fix:
        line += f"\n              -> {check.fix}"
    return line


def doctor_command() -> None:
    checks = run_checks()
    for check in checks:
        typer.echo(format_check(check))
    failed = [check for check in checks if not check.ok]
    if failed:
        typer.echo(f"{len(failed)} problem(s) found", err=True)
        # NOTE: typer.Exit(1) would be returned, not raised, by main()'s standalone_mode=False call and the
        # status lost, so exit directly.
        raise SystemExit(1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("doctor", help=DOCTOR_HELP)(doctor_command)
