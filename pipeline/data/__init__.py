"""Data: the raw IDX files (idx.py: checksums, validation, download) and the Parquet
shards every later stage reads (shards.py), configured by the `data` section (config.py)."""
