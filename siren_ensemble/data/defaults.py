"""Build defaults, shared by BuildOptions and the CLI (this module imports nothing, so the CLI stays fast)."""

SEED = 0
MAX_PER_SOURCE = 700  # ~10k records in all, no source above ~7%
MAX_CHARS = 1200  # ~100 SmolLM2 tokens per record on average: train features extract in minutes on a CPU
