"""frontiers."""
