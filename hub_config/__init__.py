"""The hub's side of the chart: chart values to JupyterHub configuration, and run-time secrets."""
