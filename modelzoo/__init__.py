"""nstzoo: the neural-style model zoo and its style-transfer engine."""

__version__ = "0.1.0"
