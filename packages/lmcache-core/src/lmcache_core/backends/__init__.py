"""Backends that ship with the core: the pure-PyTorch reference (the fallback and test oracle)."""
