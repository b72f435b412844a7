"""Readers of suite prompts, one module per `source.type` (registered in safebench/evals/suites.py)."""
