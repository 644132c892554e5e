"""Servers people would pick instead of this platform, started by the benches beside it."""
