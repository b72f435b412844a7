"""safebench: a benchmark suite for safe RLHF methods."""

__version__ = "0.1.0"
