"""Benchmarks (not tests), each printing one JSON object.

    python -m pipeline.bench [flags]              `make bench`: masks and render throughput (throughput.py)
    python -m pipeline.bench scale --clips N      `make bench-scale`: the machinery at Kinetics scale (scale.py)
"""

from pipeline.bench.throughput import lively, main, realistic_spec

__all__ = ["lively", "main", "realistic_spec"]
