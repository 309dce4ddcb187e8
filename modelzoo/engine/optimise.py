"""Optimise one image against fixed targets, reporting each iteration as a ``Progress`` event.

The image is optimised in the network's input space, as neural-style does, so the content, style and TV
weights and the Adam learning rate keep neural-style's meaning for Caffe networks. An "iteration" is one
evaluation of the loss and its gradient (neural-style counts the same way); L-BFGS without a line search
evaluates once per step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from converters.network import chain_taps
from modelzoo.engine.lbfgs import RingLBFGS
from modelzoo.engine.losses import NORM_ORDERS, TV_LOSSES, content_loss, gram_matrix, normalized
from modelzoo.engine.network import LayerPlan
from modelzoo.engine.precision import network_precision
from modelzoo.engine.targets import ContentTargets, StyleTargets
from modelzoo.engine.taps import ContentTap, StyleTap, TapRecord
from modelzoo.engine.taps import objective as taps_objective

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """One iteration of one scale (or tile).

    ``losses`` contains the weighted terms "content", "style", "tv" and their sum "total". ``layer_losses``
    contains each layer's weighted term, keyed "content/LAYER" and "style/LAYER". ``snapshot`` is the current
    image as RGB in [0, 1] on iterations that are multiples of ``save_every`` (else None).
    """

    iteration: int
    iterations: int
    losses: dict[str, float]
    layer_losses: dict[str, float]
    elapsed: float
    iterations_per_second: float
    scale_index: int = 0
    scale_count: int = 1
    size: tuple[int, int] = (0, 0)
    tile_index: int | None = None
    print_due: bool = False
    snapshot: Tensor | None = None

    @property
    def seconds_left(self) -> float:
        """Estimated seconds left in this scale, at the rate so far."""
        if self.iterations_per_second <= 0:
            return float("inf")
        return (self.iterations - self.iteration) / self.iterations_per_second


ProgressCallback = Callable[[Progress], "bool | None"]


class StopRequested(Exception):
    """Raised inside the loss evaluation when the callback returns False."""


@dataclass
class Objective:
    """The weighted loss of an image against fixed targets."""

    net: object
    plan: LayerPlan
    content: ContentTargets
    style: StyleTargets
    tv_form: str = "l2"
    normalize_gradients: bool = False
    gradient_norm: str = "l1"
    precision: str = "float32"
    channels_last: bool = False  # run the network on an NHWC copy of the image (faster with oneDNN)
    taps: bool = True  # add loss gradients inside the network's backward pass when it supports that (taps.py)
    content_layer_weights: dict[str, float] = field(default_factory=dict)
    style_layer_weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        plan = self.plan
        if not self.content_layer_weights:
            self.content_layer_weights = {layer: plan.content_weight for layer in plan.content_layers}
        if not self.style_layer_weights:
            self.style_layer_weights = {layer: plan.style_weight * weight
                                        for layer, weight in zip(plan.style_layers, plan.style_layer_weights)}

    def normalize_layer_weights(self) -> None:
        """Divide each layer's weight by the largest dimension of its target (neural-style-pt's -normalize_weights)."""
        for layer in self.content_layer_weights:
            self.content_layer_weights[layer] /= max(self.content.features[layer].shape[1:])
        for layer in self.style_layer_weights:
            self.style_layer_weights[layer] /= max(self.style.grams[layer].shape)

    def evaluate(self, image: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Return (objective to differentiate, reported total loss, weighted term per layer).

        With ``normalize_gradients`` the differentiated objective differs from the reported loss: each
        layer's gradient is normalised and then weighted, as in neural-style.
        """
        if self.taps and getattr(self.net, "supports_taps", False):
            return self._evaluate_with_taps(image)
        device = image.device
        features = self._extract(image)
        terms: dict[str, Tensor] = {}
        objective = image.new_zeros(())
        for layer, weight in self.content_layer_weights.items():
            if weight == 0:
                continue
            objective, terms[f"content/{layer}"] = self._term(
                objective, features[layer], weight, lambda f, t=self.content.features[layer]: content_loss(f, t), device)
        for layer, weight in self.style_layer_weights.items():
            if weight == 0:
                continue
            objective, terms[f"style/{layer}"] = self._term(
                objective, features[layer], weight,
                lambda f, t=self.style.grams[layer]: torch.nn.functional.mse_loss(gram_matrix(f), t), device)
        return self._with_tv(image, objective, terms)

    def _evaluate_with_taps(self, image: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``evaluate`` with the content and style terms as taps inside the network (``modelzoo.engine.taps``)."""
        record = TapRecord()
        order = NORM_ORDERS[self.gradient_norm] if self.normalize_gradients else 0
        functions: dict[str, list] = {}
        for layer, weight in self.content_layer_weights.items():
            if weight != 0:
                target = self.content.features[layer]
                functions.setdefault(layer, []).append(
                    lambda x, t=target, w=weight, key=f"content/{layer}": ContentTap.apply(x, t, w, order, record, key))
        for layer, weight in self.style_layer_weights.items():
            if weight != 0:
                target = self.style.grams[layer]
                functions.setdefault(layer, []).append(
                    lambda x, t=target, w=weight, key=f"style/{layer}": StyleTap.apply(x, t, w, order, record, key))
        taps = {layer: chain_taps(chain) for layer, chain in functions.items()}
        features = self._run_network(image, taps)
        tapped = [features[layer] for layer in taps]
        terms = {key: value.to(image.device) for key, value in record.terms.items()}
        objective = taps_objective(record, tapped).to(image.device) if tapped else image.new_zeros(())
        return self._with_tv(image, objective, terms)

    def _with_tv(self, image: Tensor, objective: Tensor, terms: dict[str, Tensor]):
        """Add the TV term to ``objective`` and ``terms``; return (objective, reported total, terms)."""
        if self.plan.tv_weight > 0:
            tv = self.plan.tv_weight * TV_LOSSES[self.tv_form](image)
            terms["tv"] = tv.detach()
            objective = objective + tv
        total = sum((value for value in terms.values()), image.new_zeros(()))
        return objective, total, terms

    def _run_network(self, image: Tensor, taps: dict | None = None) -> dict[str, Tensor]:
        """Run the network on ``image`` in the layout and precision set, with ``taps`` when given."""
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        extra = {"taps": taps} if taps is not None else {}
        with network_precision(self.precision, image.device):
            return self.net.extract(image, self.plan.all_layers, **extra)

    def _extract(self, image: Tensor) -> dict[str, Tensor]:
        """Return the requested activations in float32 (the autograd path, for networks without taps)."""
        return {name: value.float() for name, value in self._run_network(image).items()}

    def _term(self, objective: Tensor, features: Tensor, weight: float, loss, device) -> tuple[Tensor, Tensor]:
        if self.normalize_gradients:
            raw = loss(normalized(features, weight, self.gradient_norm)).to(device)
            return objective + raw, (raw * weight).detach()
        value = (loss(features) * weight).to(device)
        return objective + value, value.detach()


@dataclass
class RunSettings:
    """How to optimise: optimizer, its settings, iterations, reporting cadence and the output mapping."""

    optimizer: str = "lbfgs"
    iterations: int = 1000
    lbfgs_history: int = 100
    lbfgs_history_dtype: str = "float32"  # "bfloat16" halves the memory of the stored (s, y) pairs
    learning_rate: float = 1e1
    print_every: int = 50
    save_every: int = 0
    scale_index: int = 0
    scale_count: int = 1
    tile_index: int | None = None
    to_rgb: Callable[[Tensor], Tensor] | None = None  # network space -> RGB [0, 1], for snapshots


def _lbfgs(image: Tensor, settings: RunSettings) -> tuple[RingLBFGS, int]:
    # Negative tolerances never stop early: every run does exactly ``iterations`` evaluations.
    optimizer = RingLBFGS(image, max_iter=settings.iterations, history_size=settings.lbfgs_history,
                          history_dtype=getattr(torch, settings.lbfgs_history_dtype))
    return optimizer, 1


def _adam(image: Tensor, settings: RunSettings) -> tuple[torch.optim.Optimizer, int]:
    return torch.optim.Adam([image], lr=settings.learning_rate), settings.iterations


OPTIMIZER_MAKERS = {"lbfgs": _lbfgs, "adam": _adam}


def optimise_image(objective: Objective, init: Tensor, settings: RunSettings,
                   callback: ProgressCallback | None = None) -> tuple[Tensor, list[dict[str, float]]]:
    """Optimise ``init`` (network space) and return (the result, the loss history, one dict per iteration).

    The callback may return False to stop early; the image reached so far is returned.
    """
    image = init.detach().clone().requires_grad_(True)
    optimizer, step_calls = OPTIMIZER_MAKERS[settings.optimizer](image, settings)
    history: list[dict[str, float]] = []
    # L-BFGS takes one more step after its last evaluation; like neural-style, the result is the image of
    # the last evaluation, whose losses the history reports.
    evaluated: list[Tensor] = []
    started = time.perf_counter()
    size = (int(image.shape[-2]), int(image.shape[-1]))

    def closure() -> Tensor:
        if len(history) >= settings.iterations:
            raise StopRequested  # L-BFGS may evaluate past max_iter through max_eval; neural-style does not
        optimizer.zero_grad(set_to_none=True)
        differentiated, total, terms = objective.evaluate(image)
        differentiated.backward()
        losses = _summarise(total, terms)
        history.append(losses)
        if len(history) == settings.iterations:
            evaluated.append(image.detach().clone())
        if callback is not None:
            _report(callback, settings, history, losses, terms, started, size, image)
        return total

    try:
        for _ in range(step_calls):
            optimizer.step(closure)
    except StopRequested:
        if len(history) < settings.iterations:
            evaluated.append(image.detach().clone())
    return (evaluated[-1] if evaluated else image.detach()), history


def _summarise(total: Tensor, terms: dict[str, Tensor]) -> dict[str, float]:
    values = {name: float(value) for name, value in terms.items()}
    return {
        "content": sum(value for name, value in values.items() if name.startswith("content/")),
        "style": sum(value for name, value in values.items() if name.startswith("style/")),
        "tv": values.get("tv", 0.0),
        "total": float(total),
    }


def _report(callback: ProgressCallback, settings: RunSettings, history: list, losses: dict[str, float],
            terms: dict[str, Tensor], started: float, size: tuple[int, int], image: Tensor) -> None:
    iteration = len(history)
    elapsed = time.perf_counter() - started
    snapshot = None
    if settings.save_every and iteration % settings.save_every == 0 and settings.to_rgb is not None:
        snapshot = settings.to_rgb(image.detach()).clamp(0.0, 1.0).cpu()
    event = Progress(
        iteration=iteration,
        iterations=settings.iterations,
        losses=losses,
        layer_losses={name: float(value) for name, value in terms.items() if name != "tv"},
        elapsed=elapsed,
        iterations_per_second=iteration / elapsed if elapsed > 0 else 0.0,
        scale_index=settings.scale_index,
        scale_count=settings.scale_count,
        size=size,
        tile_index=settings.tile_index,
        print_due=bool(settings.print_every) and (iteration % settings.print_every == 0 or iteration == settings.iterations),
        snapshot=snapshot,
    )
    if callback(event) is False:
        raise StopRequested
