"""reshaping."""
