"""The vendor's own tools: the firm keystore. Used by the CLI and by central."""
