"""What the stages hand each other, one module per artifact: its layout on disk and its one typed
reader and writer, used by every producer and consumer. A stage never reads another stage's code,
only the artifact it left (see docs/architecture.md)."""
