"""Data: the raw IDX files (idx.py: checksums, validation, download), the Parquet shards
prepare writes (shards.py) and every later stage reads (load.py), configured by the `data`
section (config.py)."""
