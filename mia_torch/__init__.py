"""mia_torch: membership inference attacks on deep models."""

__version__ = "0.1.0"
