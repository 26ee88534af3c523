"""The data plane: sample schema and Parquet storage, synthetic scenes, importers, splits, FT sets."""
