"""Keysight optical power meters."""
