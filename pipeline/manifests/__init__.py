"""The manifests step: mmaction2 / PySlowFast lists and Parquet manifests from the current render shards."""

from pipeline.manifests.rows import FILTERED, MANIFEST_SCHEMA, ManifestRow
from pipeline.manifests.write import ManifestConfig, write_manifests

__all__ = ["FILTERED", "MANIFEST_SCHEMA", "ManifestConfig", "ManifestRow", "write_manifests"]
