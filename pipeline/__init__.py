"""Masked datasets for static-bias research: decode → segment → Parquet RLE mask shards."""

__version__ = "0.1.0"
