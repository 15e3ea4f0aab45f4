"""What `make up`, the tests and the benchmarks share to run real parts of the facility on this
machine (no pytest in it)."""
