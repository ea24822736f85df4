"""S4M: efficient speech separation with neural state-space layers."""

__version__ = "0.1.0"
