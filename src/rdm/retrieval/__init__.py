"""Vector collections (Qdrant Edge in-process, or a Qdrant server), neighbours and search."""
