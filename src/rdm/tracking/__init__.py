"""MLflow: the run a training logs into, what it records about its inputs, and the model registry."""
