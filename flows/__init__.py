"""Prefect flows: a thin layer that drives the pipeline in `src/rdm` (see `flows/serve.py`)."""
