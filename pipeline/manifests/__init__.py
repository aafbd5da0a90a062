"""The manifests step: mmaction2 / PySlowFast lists and Parquet manifests from the current render shards
(`write.write_manifests`), one row per clip and format (`rows`, which the render step also uses for its
WebDataset samples). Nothing is imported here, so that importing `rows` does not run `write`, which reads the
render package."""
