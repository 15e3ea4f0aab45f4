"""Batch backends of a Dask cluster, one class each: see operators/README.md."""
