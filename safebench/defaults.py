"""Defaults that the command line shows in its help, kept apart from the modules that use them
(safebench/metrics.py imports pandas and scipy, which `safebench --help` should not wait for)."""

# Bootstrap of the 95 % intervals (safebench/metrics.py): resamples and seed.
DEFAULT_N_BOOT = 2000
DEFAULT_SEED = 0
