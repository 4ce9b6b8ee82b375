"""MLflow integration of dmt: the tracking plugin (and, later, the registry model)."""
