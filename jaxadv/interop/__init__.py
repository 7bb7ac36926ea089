"""Interoperability with other frameworks (for cross-checks against peer libraries)."""
