"""Benchmarks (not tests), each printing one JSON object.

    python -m pipeline.bench [flags]              `make bench`: masks and render throughput (throughput.py)
    python -m pipeline.bench scale --clips N      `make bench-scale`: the machinery at Kinetics scale (scale.py)
    python -m pipeline.bench predict [flags]      `make bench-predict`: zero-shot predict throughput (zeroshot.py)
"""

from pipeline.bench.masks_bench import lively, realistic_spec
from pipeline.bench.throughput import main

__all__ = ["lively", "main", "realistic_spec"]
