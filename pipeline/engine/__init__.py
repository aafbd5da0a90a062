"""The one shard engine every stage runs on: plan → claim → per-item tries → atomic commit → stats last →
summary. A stage supplies only its items, what one item does, and the files its shard writes."""

from pipeline.engine.commit import Commit, file_digest
from pipeline.engine.failures import InfrastructureError, Interrupted
from pipeline.engine.layout import Layout, load_layout, select
from pipeline.engine.records import ShardStage, ShardStats, ShardTask, ShardWork
from pipeline.engine.run import StageSummary, current_shards, run_stage
from pipeline.engine.shard import is_done, run_shard
from pipeline.engine.signals import stop_on_signals

__all__ = ["Commit", "InfrastructureError", "Interrupted", "Layout", "ShardStage", "ShardStats", "ShardTask",
           "ShardWork", "StageSummary", "current_shards", "file_digest", "is_done", "load_layout", "run_shard",
           "run_stage", "select", "stop_on_signals"]
