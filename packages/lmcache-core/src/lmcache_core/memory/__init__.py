"""Host memory for cached chunks (L1)."""
