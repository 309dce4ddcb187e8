"""The style engine: Gatys et al. on the named activations of any network in the zoo."""

from modelzoo.engine.api import StyleResult, stylize
from modelzoo.engine.network import Contract, LayerPlan
from modelzoo.engine.optimise import Progress
from modelzoo.engine.options import DEFAULT_MODEL, StyleOptions

__all__ = ["DEFAULT_MODEL", "Contract", "LayerPlan", "Progress", "StyleOptions", "StyleResult", "stylize"]
