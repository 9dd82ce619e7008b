"""Image data: the demo generator, sources, validation and ingestion."""
