"""CLIP through open_clip: loading, training a small one, and batched encoding."""
