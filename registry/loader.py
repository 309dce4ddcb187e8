"""The registry: built-in cards shipped with the package, with user cards loaded over them by name."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from registry.errors import CardError, UnknownModelError
from registry.schema import ModelCard, card_from_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

logger = logging.getLogger(__name__)


def load_card(path: str | Path, builtin: bool = False) -> ModelCard:
    """Read and validate one card file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise CardError(str(path), "<file>", None, f"not UTF-8 text, as TOML requires: {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise CardError(str(path), "<file>", None, f"invalid TOML: {error}") from error
    return card_from_dict(data, str(path), builtin=builtin)


def builtin_card_paths() -> list[Path]:
    """Return the paths of the cards shipped with nstzoo, sorted by name."""
    folder = resources.files("registry") / "cards"
    return sorted(Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".toml"))


@dataclass
class Registry:
    """All known model cards, built-in first and user cards over them."""

    cards: dict[str, ModelCard] = field(default_factory=dict)

    @classmethod
    def load(cls, user_dir: str | Path | None = None) -> "Registry":
        """Load the built-in cards, then every ``*.toml`` in ``user_dir`` over them."""
        registry = cls()
        for path in builtin_card_paths():
            registry.add(load_card(path, builtin=True))
        if user_dir is not None and Path(user_dir).is_dir():
            for path in sorted(Path(user_dir).glob("*.toml")):
                card = load_card(path, builtin=False)
                if card.name in registry.cards:
                    logger.info("user card %s overrides the built-in card %s", path, card.name)
                registry.add(card)
        return registry

    def add(self, card: ModelCard) -> None:
        self.cards[card.name] = card

    def get(self, name: str) -> ModelCard:
        """Return the card called ``name``, or raise ``UnknownModelError`` listing the known names."""
        try:
            return self.cards[name]
        except KeyError:
            raise UnknownModelError(name, self.names()) from None

    def names(self) -> list[str]:
        return sorted(self.cards)

    def __iter__(self):
        return iter(self.cards[name] for name in self.names())

    def __len__(self) -> int:
        return len(self.cards)

    def __contains__(self, name: object) -> bool:
        return name in self.cards
