"""The analysis facility's client library, installed in the analysis and worker images."""
