"""nstzoo: the neural-style model zoo and its style-transfer engine."""

__version__ = "0.1.0"

# Imported eagerly (neither imports torch): a lazy wrapper named like its module would be replaced by the
# module as soon as anything imports ``modelzoo.fetch``.
from modelzoo.fetch import fetch, load_registry  # noqa: E402


def stylize(*args, **kwargs):
    """Stylize an image; see ``modelzoo.engine.stylize``.

    The engine (and torch) is imported on the first call, so ``import modelzoo`` stays fast for the CLI.
    """
    from modelzoo.engine import stylize as engine_stylize

    return engine_stylize(*args, **kwargs)


def load_model(*args, **kwargs):
    """Load a converted feature network by model name or folder; see ``modelzoo.features.load_model``.

    Imported on the first call, like ``stylize``, so ``import modelzoo`` does not import torch.
    """
    from modelzoo.features import load_model as features_load_model

    return features_load_model(*args, **kwargs)


def register(*args, **kwargs):
    """Register a model file as a user card, converted and cached; see ``modelzoo.registration.register``."""
    from modelzoo.registration import register as register_model

    return register_model(*args, **kwargs)


def unregister(name: str):
    """Remove a user card and its cache folder; see ``modelzoo.registration.unregister``."""
    from modelzoo.registration import unregister as unregister_model

    return unregister_model(name)

