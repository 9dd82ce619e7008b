"""Retrieval-augmented diffusion models as a reproducible pipeline."""
