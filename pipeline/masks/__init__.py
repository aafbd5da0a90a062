"""The masks stage: decode, segment and cache every clip's masks as Parquet shards; and reading that cache."""

from pipeline.masks.config import MasksConfig
from pipeline.masks.runner import run_masks
from pipeline.masks.store import ClipMasks, MasksRun, StoredClip, find_run, iter_shard, load_clip_masks, read_clips
from pipeline.masks.tables import CLIP_SCHEMA, MASK_SCHEMA, ClipRows, ShardFiles

__all__ = ["CLIP_SCHEMA", "MASK_SCHEMA", "ClipMasks", "ClipRows", "MasksConfig", "MasksRun", "ShardFiles",
           "StoredClip", "find_run", "iter_shard", "load_clip_masks", "read_clips", "run_masks"]
