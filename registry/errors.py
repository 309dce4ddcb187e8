"""Errors raised while loading and validating model cards."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class for registry errors."""


class CardError(RegistryError, ValueError):
    """A model card is invalid: it names the file, the field and the value."""

    def __init__(self, path: str, field: str, value: object, problem: str) -> None:
        self.path = path
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"{path}: field '{field}' = {value!r}: {problem}")


class UnknownModelError(RegistryError, KeyError):
    """No card has the requested name."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(name)

    def __str__(self) -> str:
        return (
            f"unknown model '{self.name}'. Known models: {', '.join(self.known)}. "
            "Run 'nstzoo list' to see them, or 'nstzoo register' to add your own."
        )
