"""Errors raised while converting foreign weights and building networks from graph specs."""

from __future__ import annotations

import difflib


class ConversionError(Exception):
    """Base class for conversion errors."""


class GraphSpecError(ConversionError, ValueError):
    """A graph spec is invalid or uses an op this version cannot run."""


class UnsupportedLayerError(ConversionError, NotImplementedError):
    """A source model uses layer types nstzoo cannot convert; lists every one of them at once."""

    def __init__(self, layers: list[tuple[str, str]], source: str = "") -> None:
        self.layers = layers
        self.source = source
        listed = ", ".join(f"{name} ({kind})" for name, kind in layers)
        where = f" in {source}" if source else ""
        super().__init__(f"{len(layers)} unsupported layer(s){where}: {listed}")


class UnknownLayerError(ConversionError, KeyError):
    """Requested layer names that the network does not have."""

    def __init__(self, unknown: list[str], valid: list[str], model: str = "") -> None:
        self.unknown = unknown
        self.valid = valid
        self.model = model
        super().__init__(unknown)

    @property
    def hint(self) -> str:
        """Return the next step for the user: the command that lists the model's layers."""
        if self.model:
            return f"run 'nstzoo info {self.model}' to see its layers, then pass names from that list"
        return "pass layer names from the list above"

    def __str__(self) -> str:
        of = f" of model '{self.model}'" if self.model else ""
        close = sorted({match for name in self.unknown for match in difflib.get_close_matches(name, self.valid, n=3)})
        suggestion = f" (did you mean {', '.join(close)}?)" if close else ""
        return f"unknown layer(s) {', '.join(self.unknown)}{suggestion}; valid layers{of}: {', '.join(self.valid)}"
