"""The image the optimisation starts from: the content, noise, or a given image."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from modelzoo.engine.network import Contract
from modelzoo.images import load_image

RANDOM_INIT_STD = 0.001  # neural-style's randn * 0.001, in network-input units

InitMaker = Callable[[Tensor, Contract, "torch.Generator | None", str], Tensor]


def _from_content(content_input: Tensor, contract: Contract, generator: torch.Generator | None, init: str) -> Tensor:
    return content_input.clone()


def _from_noise(content_input: Tensor, contract: Contract, generator: torch.Generator | None, init: str) -> Tensor:
    noise = torch.randn(content_input.shape, generator=generator, dtype=content_input.dtype)
    return (noise * RANDOM_INIT_STD).to(content_input.device)


def _from_file(content_input: Tensor, contract: Contract, generator: torch.Generator | None, init: str) -> Tensor:
    rgb = load_image(Path(init))
    rgb = F.interpolate(rgb, size=content_input.shape[-2:], mode="bicubic", align_corners=False, antialias=True)
    return contract.to_network(rgb.clamp(0.0, 1.0)).to(content_input)


INIT_MAKERS: dict[str, InitMaker] = {"image": _from_content, "random": _from_noise}


def make_initial_image(init: str, content_input: Tensor, contract: Contract,
                       generator: torch.Generator | None = None) -> Tensor:
    """Return the starting image in network space: "image", "random", or a file resized to the content."""
    maker = INIT_MAKERS.get(init, _from_file)
    return maker(content_input, contract, generator, init)
