"""LLM judge: protocols (one file each), client with retries and budget, cache, validation.

Entry points: `stage.run_judge_stage` (pipeline), `cli.register` (command line).
"""
