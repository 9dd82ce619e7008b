"""One module per DVC stage: read the config section, do the work, write the outputs."""
