"""The DaskCluster operator (kopf) and its user API: see operators/README.md."""
