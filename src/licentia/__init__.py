"""licentia."""
