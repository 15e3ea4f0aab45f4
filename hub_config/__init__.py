"""Turns the facility chart's values into JupyterHub configuration, and prepares the hub's secrets."""
