"""Command line: `python -m pipeline list|masks|render|manifests|predict|report|evaluate|export-pairs|status|fetch-models ...`.

Bad input (flags, dataset, folders, model) prints one line on stderr and exits 2 before anything is written.
A run whose shards all committed exits 0; one with failed shards exits 1 (rerun to retry only those), and so
does one with a variant that yields no clip (a swap that pairs none, a manifest filter that keeps none).
"""

from pipeline.cli.commands import main
from pipeline.cli.parser import build_parser

__all__ = ["build_parser", "main"]
